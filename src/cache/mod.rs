//! The data-key caches.
//!
//! Two caches with the AWS Encryption SDK's semantics, built on moka:
//!
//! - **Encrypt side**: one *active* data key per (scope, tenant). Each use is
//!   reserved before encrypting, against four limits: max age, max uses (hard cap
//!   2^32, the NIST budget for random 96-bit nonces under one key), max bytes and
//!   capacity. A key that would cross a limit is replaced by a fresh one, exactly
//!   when the limit is crossed. Each process mints its own keys, so counts are
//!   exact without coordination.
//! - **Decrypt side**: unwrapped keys by key id, with a TTL and a capacity.
//!
//! Both are single-flight: moka serialises compute operations per key, so N
//! tasks that miss together make one keyring call and the other N-1 find the
//! result. Keys are `Arc<DataKey>`: eviction drops the cache's reference and the
//! round keys are wiped only when the last task using the key lets go.
//!
//! During a keyring outage an optional *grace* period lets an expired entry
//! (past max age or TTL, never past max uses or bytes) keep serving, bounded,
//! before every operation fails closed with [`crate::Error::KeyringUnavailable`].

pub(crate) mod hot;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;

use crate::error::{Error, Result};
use crate::key::{DataKey, KeyId};

/// The hard cap on uses of one data key: 2^32 random 96-bit nonces.
pub const MAX_USES_CAP: u64 = 1 << 32;

/// Limits of the data-key caches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheLimits {
    /// How long an active data key may encrypt. Default 5 minutes.
    pub max_age: Duration,
    /// How many values one data key may encrypt. Default and hard cap 2^32.
    pub max_uses: u64,
    /// How many plaintext bytes one data key may encrypt. Default unlimited.
    /// A single value larger than this gets a data key of its own.
    pub max_bytes: u64,
    /// How many active keys (scopes x tenants) to hold. Default 1,000.
    pub capacity: u64,
    /// How long an unwrapped key stays in the decrypt cache. Default 5 minutes.
    pub decrypt_ttl: Duration,
    /// How many unwrapped keys to hold. Default 10,000.
    pub decrypt_capacity: u64,
    /// How long past max age / TTL a cached key keeps serving while the keyring
    /// is unavailable. Default zero: fail closed at once.
    pub outage_grace: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_age: Duration::from_secs(300),
            max_uses: MAX_USES_CAP,
            max_bytes: u64::MAX,
            capacity: 1_000,
            decrypt_ttl: Duration::from_secs(300),
            decrypt_capacity: 10_000,
            outage_grace: Duration::ZERO,
        }
    }
}

impl CacheLimits {
    /// Set [`CacheLimits::max_age`].
    pub fn max_age(mut self, v: Duration) -> Self {
        self.max_age = v;
        self
    }
    /// Set [`CacheLimits::max_uses`].
    pub fn max_uses(mut self, v: u64) -> Self {
        self.max_uses = v;
        self
    }
    /// Set [`CacheLimits::max_bytes`].
    pub fn max_bytes(mut self, v: u64) -> Self {
        self.max_bytes = v;
        self
    }
    /// Set [`CacheLimits::capacity`].
    pub fn capacity(mut self, v: u64) -> Self {
        self.capacity = v;
        self
    }
    /// Set [`CacheLimits::decrypt_ttl`].
    pub fn decrypt_ttl(mut self, v: Duration) -> Self {
        self.decrypt_ttl = v;
        self
    }
    /// Set [`CacheLimits::decrypt_capacity`].
    pub fn decrypt_capacity(mut self, v: u64) -> Self {
        self.decrypt_capacity = v;
        self
    }
    /// Set [`CacheLimits::outage_grace`].
    pub fn outage_grace(mut self, v: Duration) -> Self {
        self.outage_grace = v;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_uses == 0 || self.max_uses > MAX_USES_CAP {
            return Err(Error::Config(format!(
                "max_uses must be between 1 and 2^32, got {}",
                self.max_uses
            )));
        }
        if self.max_bytes == 0 || self.max_age.is_zero() || self.capacity == 0 {
            return Err(Error::Config(
                "max_bytes, max_age and capacity must be greater than zero".into(),
            ));
        }
        Ok(())
    }
}

/// Counters of the caches and keyring calls, as read by [`crate::Envelope::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Seals served by a cached active key.
    pub encrypt_hits: u64,
    /// Seals that had to wait for a new active key.
    pub encrypt_misses: u64,
    /// Opens served by a cached key.
    pub decrypt_hits: u64,
    /// Opens that had to load and unwrap a key.
    pub decrypt_misses: u64,
    /// Keyring `generate` calls (new data keys).
    pub keyring_generate_calls: u64,
    /// Keyring `unwrap` calls.
    pub keyring_unwrap_calls: u64,
    /// Keyring calls that failed.
    pub keyring_failures: u64,
    /// Active keys replaced because they reached max age.
    pub evicted_age: u64,
    /// Active keys replaced because they reached max uses.
    pub evicted_uses: u64,
    /// Active keys replaced because they reached max bytes.
    pub evicted_bytes: u64,
    /// Entries of either cache evicted for capacity.
    pub evicted_capacity: u64,
    /// Decrypt-cache entries reloaded because their TTL passed.
    pub expired_ttl: u64,
    /// Operations served from an expired entry during a keyring outage.
    pub served_in_grace: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub encrypt_hits: AtomicU64,
    pub encrypt_misses: AtomicU64,
    pub decrypt_hits: AtomicU64,
    pub decrypt_misses: AtomicU64,
    pub keyring_generate_calls: AtomicU64,
    pub keyring_unwrap_calls: AtomicU64,
    pub keyring_failures: AtomicU64,
    pub evicted_age: AtomicU64,
    pub evicted_uses: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub evicted_capacity: AtomicU64,
    pub expired_ttl: AtomicU64,
    pub served_in_grace: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> CacheStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            encrypt_hits: g(&self.encrypt_hits),
            encrypt_misses: g(&self.encrypt_misses),
            decrypt_hits: g(&self.decrypt_hits),
            decrypt_misses: g(&self.decrypt_misses),
            keyring_generate_calls: g(&self.keyring_generate_calls),
            keyring_unwrap_calls: g(&self.keyring_unwrap_calls),
            keyring_failures: g(&self.keyring_failures),
            evicted_age: g(&self.evicted_age),
            evicted_uses: g(&self.evicted_uses),
            evicted_bytes: g(&self.evicted_bytes),
            evicted_capacity: g(&self.evicted_capacity),
            expired_ttl: g(&self.expired_ttl),
            served_in_grace: g(&self.served_in_grace),
        }
    }
}

/// Which limit an active key reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Age,
    Uses,
    Bytes,
    /// Removed from the cache (replaced, evicted, invalidated).
    Revoked,
}

/// Cache ids tell the per-thread front which cache an entry belongs to; never
/// reused, unlike addresses.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

/// The encrypt-cache key: the scope, or `scope NUL tenant` for tenant-bound
/// values. One string, so the common untenanted lookup borrows the scope name
/// and allocates nothing.
pub(crate) type ScopeKey = Box<str>;

/// How long after a failed refresh an entry in outage grace serves without
/// asking the keyring again, so concurrent readers do not queue behind one
/// timeout each.
const GRACE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct ActiveKey {
    pub key: Arc<DataKey>,
    born: Duration,
    /// (uses, bytes) reserved so far.
    usage: Mutex<(u64, u64)>,
    revoked: AtomicBool,
}

impl ActiveKey {
    pub fn new(key: Arc<DataKey>, born: Duration) -> Self {
        ActiveKey {
            key,
            born,
            usage: Mutex::new((0, 0)),
            revoked: AtomicBool::new(false),
        }
    }

    /// Never use this entry again (it left the cache).
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Reserve one use of `len` bytes. `age_limit` is max age, or max age plus
    /// grace during an outage.
    pub fn reserve(
        &self,
        len: u64,
        now: Duration,
        age_limit: Duration,
        l: &CacheLimits,
    ) -> Result<(), Limit> {
        if self.is_revoked() {
            return Err(Limit::Revoked);
        }
        if now.saturating_sub(self.born) >= age_limit {
            return Err(Limit::Age);
        }
        let mut u = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if u.0 >= l.max_uses {
            return Err(Limit::Uses);
        }
        if u.1.saturating_add(len) > l.max_bytes {
            return Err(Limit::Bytes);
        }
        u.0 += 1;
        u.1 += len;
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct CachedKey {
    pub key: Arc<DataKey>,
    pub loaded: Duration,
    /// When the last refresh failed (nanoseconds of the clock, 0 = never).
    pub failed_at: AtomicU64,
    revoked: AtomicBool,
}

impl CachedKey {
    pub fn new(key: Arc<DataKey>, loaded: Duration) -> Self {
        CachedKey {
            key,
            loaded,
            failed_at: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        }
    }

    /// Never use this entry again (it left the cache).
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    fn failed_recently(&self, now: Duration) -> bool {
        let at = self.failed_at.load(Ordering::Relaxed);
        at != 0 && now.saturating_sub(Duration::from_nanos(at)) < GRACE_RETRY_INTERVAL
    }
}

/// Both caches.
#[derive(Debug)]
pub(crate) struct KeyCache {
    pub id: u64,
    pub limits: CacheLimits,
    pub active: Cache<ScopeKey, Arc<ActiveKey>>,
    pub unwrapped: Cache<KeyId, Arc<CachedKey>>,
}

impl KeyCache {
    pub fn new(limits: CacheLimits, counters: Arc<Counters>) -> Self {
        let c1 = counters.clone();
        let active = Cache::builder()
            .max_capacity(limits.capacity)
            .support_invalidation_closures()
            .eviction_listener(move |_k, v: Arc<ActiveKey>, cause| {
                v.revoke();
                if cause == RemovalCause::Size {
                    bump(&c1.evicted_capacity);
                }
            })
            .build();
        let unwrapped = Cache::builder()
            .max_capacity(limits.decrypt_capacity)
            .eviction_listener(move |_k, v: Arc<CachedKey>, cause| {
                v.revoke();
                if cause == RemovalCause::Size {
                    bump(&counters.evicted_capacity);
                }
            })
            .build();
        KeyCache {
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            limits,
            active,
            unwrapped,
        }
    }

    /// Replace the active key of `scope` if it is absent or is `stale`; otherwise
    /// keep whatever another task put there. `mint` runs at most once, while
    /// other callers for the same scope wait.
    pub async fn refresh_active<F, Fut>(
        &self,
        scope: &ScopeKey,
        stale: Option<&Arc<ActiveKey>>,
        mint: F,
    ) -> Result<Arc<ActiveKey>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<ActiveKey>>>,
    {
        let res = self
            .active
            .entry(scope.clone())
            .and_try_compute_with(|cur| async move {
                match cur {
                    Some(e) if stale.is_none_or(|s| !Arc::ptr_eq(s, e.value())) => Ok(Op::Nop),
                    _ => mint().await.map(Op::Put),
                }
            })
            .await?;
        Ok(res
            .into_entry()
            .expect("compute either kept or put an entry")
            .into_value())
    }

    /// Get the unwrapped key `id`, loading it with `load` when absent or past its
    /// TTL. During an outage (`load` failing with a retryable error) an entry
    /// within TTL + grace keeps serving.
    pub async fn unwrapped<F, Fut>(
        &self,
        id: KeyId,
        now: Duration,
        counters: &Counters,
        load: F,
    ) -> Result<Arc<CachedKey>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<CachedKey>>>,
    {
        let ttl = self.limits.decrypt_ttl;
        if let Some(hit) = hot::unwrapped(self.id, id)
            && now.saturating_sub(hit.loaded) < ttl
        {
            bump(&counters.decrypt_hits);
            return Ok(hit);
        }
        if let Some(hit) = self.unwrapped.get(&id).await
            && now.saturating_sub(hit.loaded) < ttl
        {
            bump(&counters.decrypt_hits);
            hot::remember_unwrapped(self.id, id, &hit);
            return Ok(hit);
        }
        bump(&counters.decrypt_misses);
        let grace_limit = ttl + self.limits.outage_grace;
        let res = self
            .unwrapped
            .entry(id)
            .and_try_compute_with(|cur| async move {
                let cur = cur.map(|e| e.into_value());
                match cur {
                    Some(c) if now.saturating_sub(c.loaded) < ttl => Ok(Op::Nop),
                    Some(c)
                        if now.saturating_sub(c.loaded) < grace_limit && c.failed_recently(now) =>
                    {
                        // The keyring failed a moment ago: serve within grace
                        // without waiting for another timeout.
                        bump(&counters.served_in_grace);
                        Ok(Op::Nop)
                    }
                    stale => {
                        if stale.is_some() {
                            bump(&counters.expired_ttl);
                        }
                        match load().await {
                            Ok(fresh) => Ok(Op::Put(fresh)),
                            Err(e) if e.is_retryable() => match stale {
                                Some(c) if now.saturating_sub(c.loaded) < grace_limit => {
                                    let nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX).max(1);
                                    c.failed_at.store(nanos, Ordering::Relaxed);
                                    bump(&counters.served_in_grace);
                                    tracing::warn!(target: "sqlx_envelope::cache", key_id = id.get(), error = %e, "keyring unavailable; serving cached data key within outage grace");
                                    Ok(Op::Nop)
                                }
                                _ => Err(e),
                            },
                            Err(e) => Err(e),
                        }
                    }
                }
            })
            .await?;
        let key = res
            .into_entry()
            .expect("compute either kept or put an entry")
            .into_value();
        hot::remember_unwrapped(self.id, id, &key);
        Ok(key)
    }
}
