//! The key caches.
//!
//! Three caches with the AWS Encryption SDK's semantics, built on moka:
//!
//! - **Encrypt side**: one *active* data key per (scope, tenant). Each use is
//!   reserved before encrypting, against four limits: max age, max uses (hard cap
//!   2^32, the NIST budget for random 96-bit nonces under one key), max bytes and
//!   capacity. A key that would cross a limit is replaced by a fresh one, exactly
//!   when the limit is crossed. Each process mints its own keys, so counts are
//!   exact without coordination. Uses and bytes are atomic counters; a batch
//!   reserves all its uses in one step.
//! - **Decrypt side**: unwrapped data keys by key id, with a TTL and a capacity.
//! - **Branch keys**: unwrapped branch keys by key id, with their own TTL.
//!
//! All are single-flight: moka serialises compute operations per key, so N
//! tasks that miss together make one load and the other N-1 find the result;
//! revocation goes through the same per-key compute, so a load that started
//! before a key was retired cannot publish it afterwards. Keys are `Arc`s:
//! eviction drops the cache's reference and the round keys are wiped only when
//! the last task using the key lets go.
//!
//! The warm path reads the envelope's read-mostly fronts instead of moka, and a
//! coarse clock instead of the precise one (see [`crate::clock`]): no lock, no
//! await, one coarse clock read per operation.
//!
//! During a keyring outage an optional *grace* period lets an expired entry
//! (past max age or TTL, never past max uses or bytes) keep serving, bounded,
//! before every operation fails closed with [`crate::Error::KeyringUnavailable`].

pub(crate) mod front;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;

use crate::error::{Error, Result};
use crate::hierarchy::BranchKey;
use crate::key::{DataKey, KeyId};

/// The hard cap on uses of one data key: 2^32 random 96-bit nonces.
pub const MAX_USES_CAP: u64 = 1 << 32;

/// Limits of the key caches.
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
    /// How long an unwrapped data key stays in the decrypt cache. Default 5
    /// minutes.
    pub decrypt_ttl: Duration,
    /// How many unwrapped data keys to hold. Default 10,000.
    pub decrypt_capacity: u64,
    /// How long an unwrapped branch key (or blind-index key) stays cached: how
    /// often each process asks the master keyring (KMS) for each branch or
    /// index key it uses. Default 10 minutes (the AWS Database Encryption SDK's
    /// examples use 600 s).
    pub branch_ttl: Duration,
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
            branch_ttl: Duration::from_secs(600),
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
    /// Set [`CacheLimits::branch_ttl`].
    pub fn branch_ttl(mut self, v: Duration) -> Self {
        self.branch_ttl = v;
        self
    }
    /// Set [`CacheLimits::outage_grace`].
    pub fn outage_grace(mut self, v: Duration) -> Self {
        self.outage_grace = v;
        self
    }

    /// How long after its activation a process may still seal under a data key
    /// it minted: max age plus outage grace. Recorded in the store as the key's
    /// horizon.
    pub fn seal_window(&self) -> Duration {
        self.max_age.saturating_add(self.outage_grace)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_uses == 0 || self.max_uses > MAX_USES_CAP {
            return Err(Error::Config(format!(
                "max_uses must be between 1 and 2^32, got {}",
                self.max_uses
            )));
        }
        if self.max_bytes == 0
            || self.max_age.is_zero()
            || self.capacity == 0
            || self.decrypt_ttl.is_zero()
            || self.branch_ttl.is_zero()
        {
            return Err(Error::Config(
                "max_bytes, max_age, capacity, decrypt_ttl and branch_ttl must be greater than zero"
                    .into(),
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
    /// Opens served by a cached key (a batch resolved through
    /// [`crate::Envelope::keys_for`] counts one per distinct key).
    pub decrypt_hits: u64,
    /// Opens that had to load and unwrap a key.
    pub decrypt_misses: u64,
    /// Keyring `generate` calls (new branch keys, index keys; KMS
    /// GenerateDataKey).
    pub keyring_generate_calls: u64,
    /// Keyring `unwrap` calls (branch keys, index keys, data keys of releases
    /// before branch keys; KMS Decrypt).
    pub keyring_unwrap_calls: u64,
    /// Keyring calls that failed.
    pub keyring_failures: u64,
    /// Data keys minted (locally, wrapped by a branch key: no keyring call).
    pub data_keys_minted: u64,
    /// Branch keys minted.
    pub branch_keys_minted: u64,
    /// Active keys replaced because they reached max age.
    pub evicted_age: u64,
    /// Active keys replaced because they reached max uses.
    pub evicted_uses: u64,
    /// Active keys replaced because they reached max bytes.
    pub evicted_bytes: u64,
    /// Entries of any cache evicted for capacity.
    pub evicted_capacity: u64,
    /// Cached unwrapped keys (data, branch and index keys) reloaded because
    /// their TTL passed (an index key the cache's own wall-clock expiry already
    /// dropped reloads uncounted).
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
    pub data_keys_minted: AtomicU64,
    pub branch_keys_minted: AtomicU64,
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
            data_keys_minted: g(&self.data_keys_minted),
            branch_keys_minted: g(&self.branch_keys_minted),
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
    /// Removed from the cache (replaced, evicted, revoked).
    Revoked,
}

/// The encrypt-cache key: the scope, or `scope NUL tenant` for tenant-bound
/// values.
pub(crate) type ScopeKey = Box<str>;

/// How long after a failed refresh an entry in outage grace serves without
/// asking the keyring again, so concurrent readers do not queue behind one
/// timeout each.
const GRACE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// `a + b >= c + d`, saturating (time comparisons of the conservative checks).
pub(crate) fn reached(now: Duration, slack: Duration, start: Duration, limit: Duration) -> bool {
    now.saturating_add(slack) >= start.saturating_add(limit)
}

/// A data key this process seals under, with its reserved uses and bytes.
#[derive(Debug)]
pub(crate) struct ActiveKey {
    id: KeyId,
    /// The data key; emptied by [`ActiveKey::revoke`], so that a revoked
    /// entry that the cache's memory reclamation keeps for a while (moka frees
    /// removed entries through an epoch-based collector) holds no key.
    key: arc_swap::ArcSwapOption<DataKey>,
    /// Coarse-clock reading at mint, taken before the key was activated in the
    /// store (so this process stops sealing before the recorded horizon).
    born: Duration,
    uses: AtomicU64,
    bytes: AtomicU64,
    revoked: AtomicBool,
}

impl ActiveKey {
    pub fn new(key: Arc<DataKey>, born: Duration) -> Self {
        ActiveKey {
            id: key.id(),
            key: arc_swap::ArcSwapOption::new(Some(key)),
            born,
            uses: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        }
    }

    /// Never use this entry again (it left the cache), and let go of its key.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.key.store(None);
    }

    /// The data key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Run `f` with the data key, unless the entry was revoked.
    #[inline]
    pub fn with_key<R>(&self, f: impl FnOnce(&DataKey) -> R) -> Option<R> {
        self.key.load().as_deref().map(f)
    }

    /// The data key, unless the entry was revoked.
    pub fn data_key(&self) -> Option<Arc<DataKey>> {
        self.key.load_full()
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Reserve `n` uses of `len` bytes in total. `now` is a coarse reading that
    /// lags by at most `slack`; the age check adds the slack, so a key never
    /// seals past `age_limit` (max age, or max age plus grace during an outage).
    #[inline]
    pub fn reserve(
        &self,
        n: u64,
        len: u64,
        now: Duration,
        slack: Duration,
        age_limit: Duration,
        l: &CacheLimits,
    ) -> Result<(), Limit> {
        if self.is_revoked() {
            return Err(Limit::Revoked);
        }
        if reached(now, slack, self.born, age_limit) {
            return Err(Limit::Age);
        }
        if l.max_bytes != u64::MAX {
            let mut cur = self.bytes.load(Ordering::Relaxed);
            loop {
                let next = cur.saturating_add(len);
                if next > l.max_bytes {
                    return Err(Limit::Bytes);
                }
                match self.bytes.compare_exchange_weak(
                    cur,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(v) => cur = v,
                }
            }
        }
        // A failed reservation leaves the counter past the limit: the key is
        // exhausted and gets replaced, exactly when the limit would be crossed.
        let before = self.uses.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > l.max_uses {
            return Err(Limit::Uses);
        }
        Ok(())
    }
}

/// An unwrapped data key in the decrypt cache.
#[derive(Debug)]
pub(crate) struct CachedKey {
    /// The data key; emptied by [`CachedKey::revoke`] (see [`ActiveKey`]).
    key: arc_swap::ArcSwapOption<DataKey>,
    /// Coarse-clock reading when it was loaded.
    pub loaded: Duration,
    /// When the last refresh failed (nanoseconds of the clock, 0 = never).
    pub failed_at: AtomicU64,
    revoked: AtomicBool,
}

impl CachedKey {
    pub fn new(key: Arc<DataKey>, loaded: Duration) -> Self {
        CachedKey {
            key: arc_swap::ArcSwapOption::new(Some(key)),
            loaded,
            failed_at: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        }
    }

    /// Never use this entry again, and let go of its key.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.key.store(None);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Run `f` with the data key, unless the entry was revoked.
    #[inline]
    pub fn with_key<R>(&self, f: impl FnOnce(&DataKey) -> R) -> Option<R> {
        self.key.load().as_deref().map(f)
    }

    /// The data key, unless the entry was revoked.
    pub fn data_key(&self) -> Option<Arc<DataKey>> {
        self.key.load_full()
    }

    /// Whether the entry is within `ttl` at the coarse reading `now` (lagging
    /// by at most `slack`).
    #[inline]
    pub fn fresh(&self, now: Duration, slack: Duration, ttl: Duration) -> bool {
        !reached(now, slack, self.loaded, ttl)
    }

    fn failed_recently(&self, now: Duration) -> bool {
        let at = self.failed_at.load(Ordering::Relaxed);
        at != 0 && now.saturating_sub(Duration::from_nanos(at)) < GRACE_RETRY_INTERVAL
    }
}

/// An unwrapped branch key in the branch cache.
#[derive(Debug)]
pub(crate) struct CachedBranch {
    pub key: Arc<BranchKey>,
    pub loaded: Duration,
    pub failed_at: AtomicU64,
}

/// What the grace-aware loader caches.
pub(crate) trait Loaded: Send + Sync + 'static {
    fn loaded(&self) -> Duration;
    fn failed_at(&self) -> &AtomicU64;
    /// The key's id, for logs (none once revoked).
    fn key_id(&self) -> Option<KeyId>;
    fn failed_recently(&self, now: Duration) -> bool {
        let at = self.failed_at().load(Ordering::Relaxed);
        at != 0 && now.saturating_sub(Duration::from_nanos(at)) < GRACE_RETRY_INTERVAL
    }
}

impl Loaded for CachedKey {
    fn loaded(&self) -> Duration {
        self.loaded
    }
    fn failed_at(&self) -> &AtomicU64 {
        &self.failed_at
    }
    fn failed_recently(&self, now: Duration) -> bool {
        CachedKey::failed_recently(self, now)
    }
    fn key_id(&self) -> Option<KeyId> {
        self.data_key().map(|k| k.id())
    }
}

impl Loaded for CachedBranch {
    fn loaded(&self) -> Duration {
        self.loaded
    }
    fn failed_at(&self) -> &AtomicU64 {
        &self.failed_at
    }
    fn key_id(&self) -> Option<KeyId> {
        Some(self.key.id())
    }
}

/// The caches of one envelope.
#[derive(Debug)]
pub(crate) struct KeyCache {
    pub limits: CacheLimits,
    pub active: Cache<ScopeKey, Arc<ActiveKey>>,
    pub unwrapped: Cache<KeyId, Arc<CachedKey>>,
    pub branches: Cache<KeyId, Arc<CachedBranch>>,
    pub seal_front: front::SealFront,
    pub open_front: Arc<front::OpenFront>,
}

impl KeyCache {
    pub fn new(limits: CacheLimits, counters: Arc<Counters>) -> Self {
        let c1 = counters.clone();
        let active = Cache::builder()
            .max_capacity(limits.capacity)
            .eviction_listener(move |_k, v: Arc<ActiveKey>, cause| {
                v.revoke();
                if cause == RemovalCause::Size {
                    bump(&c1.evicted_capacity);
                }
            })
            .build();
        let open_front = Arc::new(front::OpenFront::default());
        let (c2, front2) = (counters.clone(), open_front.clone());
        let unwrapped = Cache::builder()
            .max_capacity(limits.decrypt_capacity)
            .eviction_listener(move |k: Arc<KeyId>, v: Arc<CachedKey>, cause| {
                v.revoke();
                front2.remove_if_same(*k, &v);
                if cause == RemovalCause::Size {
                    bump(&c2.evicted_capacity);
                }
            })
            .build();
        let branches = Cache::builder()
            .max_capacity(limits.decrypt_capacity)
            .eviction_listener(move |_k, _v: Arc<CachedBranch>, cause| {
                if cause == RemovalCause::Size {
                    bump(&counters.evicted_capacity);
                }
            })
            .build();
        KeyCache {
            limits,
            active,
            unwrapped,
            branches,
            seal_front: front::SealFront::default(),
            open_front,
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
                    Some(e)
                        if !e.value().is_revoked()
                            && stale.is_none_or(|s| !Arc::ptr_eq(s, e.value())) =>
                    {
                        Ok(Op::Nop)
                    }
                    _ => mint().await.map(Op::Put),
                }
            })
            .await?;
        Ok(res
            .into_entry()
            .expect("compute either kept or put an entry")
            .into_value())
    }
}

/// Get the entry `id` of `cache`, loading it with `load` when absent, revoked
/// by `is_dead`, or past `ttl` (at coarse reading `now`, lagging by at most
/// `slack`). During an outage (`load` failing with a retryable error) an entry
/// within TTL + grace keeps serving. `publish` runs inside the per-key compute
/// (so it is ordered with revocations of the same key).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn load_through<K, V, F, Fut>(
    cache: &Cache<K, Arc<V>>,
    id: K,
    now: Duration,
    slack: Duration,
    ttl: Duration,
    grace: Duration,
    counters: &Counters,
    is_dead: impl Fn(&V) -> bool + Send,
    load: F,
    publish: impl FnOnce(&Arc<V>) + Send,
) -> Result<Arc<V>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Loaded,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<Arc<V>>> + Send,
{
    let grace_limit = ttl.saturating_add(grace);
    let res = cache
        .entry(id)
        .and_try_compute_with(|cur| async move {
            let cur = cur.map(|e| e.into_value()).filter(|c| !is_dead(c));
            match cur {
                Some(c) if !reached(now, slack, c.loaded(), ttl) => Ok(Op::Nop),
                Some(c)
                    if !reached(now, slack, c.loaded(), grace_limit) && c.failed_recently(now) =>
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
                        Ok(fresh) => {
                            publish(&fresh);
                            Ok(Op::Put(fresh))
                        }
                        Err(e) if e.is_retryable() => match stale {
                            Some(c) if !reached(now, slack, c.loaded(), grace_limit) => {
                                let nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX).max(1);
                                c.failed_at().store(nanos, Ordering::Relaxed);
                                bump(&counters.served_in_grace);
                                tracing::warn!(target: "sqlx_envelope::cache", key_id = c.key_id().map(KeyId::get), error = %e, "keyring unavailable; serving a cached key within outage grace");
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
    Ok(res
        .into_entry()
        .expect("compute either kept or put an entry")
        .into_value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyMaterial;

    fn key() -> ActiveKey {
        ActiveKey::new(
            Arc::new(DataKey::new(KeyId::new(1), &KeyMaterial::generate())),
            Duration::from_secs(100),
        )
    }

    #[test]
    fn uses_and_bytes_are_exact_and_batches_reserve_at_once() {
        let l = CacheLimits::default().max_uses(5).max_bytes(100);
        let k = key();
        let t = Duration::from_secs(100);
        let age = Duration::from_secs(60);
        let z = Duration::ZERO;
        assert_eq!(k.reserve(3, 60, t, z, age, &l), Ok(()));
        assert_eq!(k.reserve(1, 41, t, z, age, &l), Err(Limit::Bytes));
        assert_eq!(k.reserve(2, 40, t, z, age, &l), Ok(()));
        assert_eq!(k.reserve(1, 0, t, z, age, &l), Err(Limit::Uses));
        k.revoke();
        assert_eq!(k.reserve(1, 0, t, z, age, &l), Err(Limit::Revoked));
    }

    #[test]
    fn the_coarse_age_check_is_never_late() {
        let l = CacheLimits::default();
        let age = Duration::from_secs(60);
        let born = Duration::from_secs(100);
        let slack = Duration::from_millis(20);
        // Real time sweeps across the limit; the coarse reading lags by up to
        // `slack`. Whatever the lag, a key past max age is refused, and a key
        // younger than max age minus twice the slack is accepted.
        for real_ms in (59_900..60_100).step_by(3) {
            let real = Duration::from_millis(real_ms);
            for lag_ms in [0, 7, 13, 20] {
                let coarse = born + real - Duration::from_millis(lag_ms);
                let ok = key_at(born).reserve(1, 0, coarse, slack, age, &l).is_ok();
                if real >= age {
                    assert!(!ok, "sealed at real age {real:?}");
                }
                if real + 2 * slack <= age {
                    assert!(ok, "refused at real age {real:?}");
                }
            }
        }
    }

    fn key_at(born: Duration) -> ActiveKey {
        ActiveKey::new(
            Arc::new(DataKey::new(KeyId::new(1), &KeyMaterial::generate())),
            born,
        )
    }
}
