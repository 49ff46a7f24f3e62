//! The envelope: seal and open values.
//!
//! [`Envelope`] ties a [`Keyring`] (master keys), a [`KeyStore`] (the key tree in
//! the application's database) and the caches together. It is cheap to clone
//! (one `Arc`) and meant to be built once per process and shared.
//!
//! A seal or open whose key is cached takes the *warm path*: synchronous, no
//! lock, no await, no precise clock read ([`Envelope::seal_if_cached`],
//! [`Envelope::open_if_cached`]; the async [`Envelope::seal`] and
//! [`Envelope::open`] try it first). Everything else (minting a data key,
//! unwrapping a branch key through KMS, registering a column) is the slow path,
//! where single-flight, bounded keyring concurrency and the store's
//! compare-and-set state machine live.

mod keys;
mod lifecycle;
mod open;
mod seal;

pub use keys::IndexKey;
pub use lifecycle::ShredReport;
pub use open::KeySet;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::cache::{CacheLimits, CacheStats, Counters, KeyCache};
use crate::clock::{Clock, SystemClock};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::keyring::{Keyring, TenantKeyrings};
use crate::store::KeyStore;

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
    pub(crate) fn scope_of<'a>(&'a self, ctx: &Context<'a>) -> std::borrow::Cow<'a, str> {
        match self {
            ScopePolicy::Table => ctx.table.into(),
            ScopePolicy::Column => format!("{}.{}", ctx.table, ctx.column).into(),
            ScopePolicy::Fixed(s) => s.as_str().into(),
        }
    }

    /// True only if two values have the same scope and tenant (so they share
    /// an active key). It compares names, at once when they are the same
    /// strings (as the values of one batch usually are); two different
    /// names that make one scope (`Column`: table `a.b` with column `c`, and
    /// table `a` with column `b.c`) are not seen as one here, so a caller
    /// that gets false compares the scopes themselves ([`Self::scope_of`]).
    #[inline]
    pub(crate) fn same_group(&self, a: &Context<'_>, b: &Context<'_>) -> bool {
        use crate::format::{same_opt_str, same_str};
        let scope = match self {
            ScopePolicy::Table => same_str(a.table, b.table),
            ScopePolicy::Column => same_str(a.table, b.table) && same_str(a.column, b.column),
            ScopePolicy::Fixed(_) => true,
        };
        scope && same_opt_str(a.tenant, b.tenant)
    }
}

/// The default age after which a branch key is replaced by a new one (its
/// data keys keep opening: the old branch key becomes decrypt-only).
pub const DEFAULT_BRANCH_ROTATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default bound on concurrent keyring calls of one envelope.
pub const DEFAULT_KEYRING_CONCURRENCY: usize = 16;

/// Builds an [`Envelope`].
#[derive(Debug, Default)]
pub struct EnvelopeBuilder {
    keyring: Option<Arc<dyn Keyring>>,
    tenants: Vec<(String, Arc<dyn Keyring>)>,
    store: Option<Arc<dyn KeyStore>>,
    limits: CacheLimits,
    clock: Option<Arc<dyn Clock>>,
    scope: ScopePolicy,
    branch_rotation: Option<Duration>,
    keyring_concurrency: Option<usize>,
    batch_threads: Option<usize>,
}

impl EnvelopeBuilder {
    /// The keyring that wraps branch keys (and index keys). Required.
    pub fn keyring(mut self, keyring: impl Keyring + 'static) -> Self {
        self.keyring = Some(Arc::new(keyring));
        self
    }

    /// The keyring, already shared.
    pub fn keyring_arc(mut self, keyring: Arc<dyn Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Bring your own key: the keys of `tenant` are wrapped only by `keyring`
    /// (for example the tenant's own KMS key, possibly in another account), not
    /// by the default keyring. A failure of this keyring fails that tenant alone,
    /// with [`Error::TenantKeyring`] naming it. Repeatable.
    pub fn tenant_keyring(
        mut self,
        tenant: impl Into<String>,
        keyring: impl Keyring + 'static,
    ) -> Self {
        self.tenants.push((tenant.into(), Arc::new(keyring)));
        self
    }

    /// [`EnvelopeBuilder::tenant_keyring`] with a shared keyring.
    pub fn tenant_keyring_arc(
        mut self,
        tenant: impl Into<String>,
        keyring: Arc<dyn Keyring>,
    ) -> Self {
        self.tenants.push((tenant.into(), keyring));
        self
    }

    /// The key store holding the key tree. Required.
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

    /// How old (by the key store's clock) a branch key may get before the next
    /// data key minted under its tenant or scope gets a new branch key. Default
    /// [`DEFAULT_BRANCH_ROTATION`] (30 days).
    pub fn branch_rotation(mut self, age: Duration) -> Self {
        self.branch_rotation = Some(age);
        self
    }

    /// At most this many keyring (KMS) calls of this envelope in flight at once;
    /// a batch that needs more queues instead of bursting against the account's
    /// quota. Default [`DEFAULT_KEYRING_CONCURRENCY`] (16).
    pub fn keyring_concurrency(mut self, n: usize) -> Self {
        self.keyring_concurrency = Some(n);
        self
    }

    /// At most this many threads work on one large batch:
    /// [`Envelope::seal_many`] splits the values under one key across them
    /// from 4,096 values (parts of at least 2,048; a page of a few thousand
    /// values is sealed faster on one thread than handed half to another
    /// core), the model batch openers ([`crate::model::open_all`] and its kin)
    /// a result set from 512 rows (parts of at least 256; a first part under
    /// 512 rows is opened on the calling task meanwhile). Default: the
    /// machine's cores, for an application that waits for the batch. With 1
    /// every batch stays on one thread, which leaves the other cores to the
    /// database when the application seals one page while the database writes
    /// another (or opens one page while the next is fetched).
    pub fn batch_threads(mut self, n: usize) -> Self {
        self.batch_threads = Some(n);
        self
    }

    /// Build the envelope.
    pub fn build(self) -> Result<Envelope> {
        let default = self.keyring.ok_or_else(|| {
            Error::Config("an envelope needs a keyring: call .keyring(..)".into())
        })?;
        let store = self.store.ok_or_else(|| {
            Error::Config("an envelope needs a key store: call .store(..)".into())
        })?;
        self.limits.validate()?;
        let permits = self
            .keyring_concurrency
            .unwrap_or(DEFAULT_KEYRING_CONCURRENCY);
        if permits == 0 {
            return Err(Error::Config(
                "keyring_concurrency must be at least 1".into(),
            ));
        }
        let batch_threads = self
            .batch_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if batch_threads == 0 {
            return Err(Error::Config(
                "batch_threads must be at least 1 (1 keeps every batch on one thread)".into(),
            ));
        }
        let branch_rotation = self.branch_rotation.unwrap_or(DEFAULT_BRANCH_ROTATION);
        if branch_rotation.is_zero() {
            return Err(Error::Config(
                "branch_rotation must be greater than zero".into(),
            ));
        }
        let keyring: Arc<dyn Keyring> = if self.tenants.is_empty() {
            default
        } else {
            Arc::new(TenantKeyrings::new(default, self.tenants)?)
        };
        let counters = Arc::new(Counters::default());
        let index_ttl = self
            .limits
            .branch_ttl
            .saturating_add(self.limits.outage_grace)
            // moka refuses a time to live of more than 1,000 years.
            .min(Duration::from_secs(100 * 365 * 24 * 3600));
        Ok(Envelope {
            inner: Arc::new(Inner {
                owner: process_owner(),
                registered: moka::future::Cache::builder().max_capacity(100_000).build(),
                cache: KeyCache::new(self.limits, counters.clone()),
                counters,
                keyring,
                store,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
                scope: self.scope,
                branch_rotation,
                keyring_permits: tokio::sync::Semaphore::new(permits),
                revocations: AtomicU64::new(0),
                batch_threads,
                // The entries' own TTL is checked against the envelope's
                // clock ([`Envelope::index_key`]); this one (wall time) is a
                // backstop: moka drops an expired entry at its next
                // maintenance (any later use of this cache).
                index_keys: moka::future::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(index_ttl)
                    .build(),
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    /// This envelope's name in the key store (owner of the keys it reserves).
    owner: String,
    /// Columns and models this process has registered in the store.
    registered: moka::future::Cache<String, ()>,
    keyring: Arc<dyn Keyring>,
    store: Arc<dyn KeyStore>,
    cache: KeyCache,
    counters: Arc<Counters>,
    clock: Arc<dyn Clock>,
    scope: ScopePolicy,
    branch_rotation: Duration,
    keyring_permits: tokio::sync::Semaphore,
    /// Bumped by every revocation in this process; a batch load that prefetched
    /// key records re-reads them if it changed meanwhile.
    revocations: AtomicU64,
    /// See [`EnvelopeBuilder::batch_threads`].
    batch_threads: usize,
    /// Unwrapped blind-index keys by slot, each for the branch TTL
    /// ([`Envelope::index_key`]).
    index_keys: moka::future::Cache<String, Arc<keys::IndexKey>>,
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

    /// How many threads may work on one large batch (see
    /// [`EnvelopeBuilder::batch_threads`]).
    pub fn batch_threads(&self) -> usize {
        self.inner.batch_threads
    }

    /// The keyring (a [`TenantKeyrings`] when tenants have keyrings of their
    /// own).
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

    /// This envelope's name in the key store: the owner recorded on the keys it
    /// reserves (host, process id and a random suffix).
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }
}

/// A process's name in the key store: host, process id and a random suffix
/// (one per envelope), so two envelopes never take each other's reservations.
fn process_owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let mut r = [0u8; 4];
    rand::fill(&mut r);
    format!("{host}/{}/{}", std::process::id(), crate::format::hex(&r))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::RowId;

    /// The batch seal's shortcut (`same_group`, which compares names by
    /// address first) agrees with comparing scopes and tenants, whether equal
    /// names are one string or two; where two different names make one scope,
    /// it says false (the caller then compares scopes), never true wrongly.
    #[test]
    fn same_group_is_same_scope_and_tenant() {
        let row = RowId::from(1_i64);
        let (t, a, x) = (String::from("t"), String::from("a"), String::from("x"));
        let ctxs = [
            Context::new("t", "a", &row),
            Context::new("t", "b", &row),
            Context::new(&t, &a, &row),
            Context::new("u", "a", &row),
            Context::new("t", "a", &row).with_tenant("x"),
            Context::new("t", "a", &row).with_tenant(&x),
            Context::new("t", "b", &row).with_tenant("x"),
            Context::new("t", "a", &row).with_tenant("y"),
        ];
        let policies = [
            ScopePolicy::Table,
            ScopePolicy::Column,
            ScopePolicy::Fixed("all".into()),
        ];
        let mut grouped = 0;
        for policy in &policies {
            for p in &ctxs {
                for q in &ctxs {
                    let expected = policy.scope_of(p) == policy.scope_of(q) && p.tenant == q.tenant;
                    assert_eq!(
                        policy.same_group(p, q),
                        expected,
                        "{policy:?}: {p:?} / {q:?}"
                    );
                    grouped += usize::from(expected);
                }
            }
        }
        // Neither always nor never: the pairs above split both ways.
        assert!(
            grouped > ctxs.len() * policies.len() && grouped < ctxs.len().pow(2) * policies.len()
        );
        let (p, q) = (
            Context::new("a.b", "c", &row),
            Context::new("a", "b.c", &row),
        );
        assert_eq!(
            ScopePolicy::Column.scope_of(&p),
            ScopePolicy::Column.scope_of(&q)
        );
        assert!(!ScopePolicy::Column.same_group(&p, &q));
    }
}
