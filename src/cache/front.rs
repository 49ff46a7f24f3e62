//! Read-mostly fronts for the caches: the warm path.
//!
//! A moka lookup costs a hash, a concurrent-map probe, an access-time clock
//! read and a read record for the eviction policy: about 150 ns, more than
//! sealing a 64-byte value. Most operations hit a handful of keys, so each cache
//! has a front: an immutable map behind an [`ArcSwap`], read with one guard
//! load and one hash probe, no lock, no reference-count traffic and no clock
//! read in the lookup (callers pass the coarse time they read once). Writers (a miss, an eviction, a revocation: rare) copy the map.
//!
//! moka stays the authority: every entry carries a `revoked` flag set when
//! moka removes it (replacement, capacity, revocation), and limits (age, uses,
//! bytes, TTL) are checked on the entry itself, so a front never serves what
//! the cache would not. The fronts live in the envelope, not in thread-locals:
//! dropping the envelope, or revoking a key, leaves no copy of key material
//! reachable, so the keys are zeroized when the last user lets go.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hashbrown::{Equivalent, HashMap};

use super::{ActiveKey, CachedKey};
use crate::key::KeyId;

/// The seal front's key: where a value goes. One entry per column and tenant,
/// created only after the column was registered in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    table: Box<str>,
    column: Box<str>,
    tenant: Option<Box<str>>,
}

impl Hash for Place {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (&*self.table, &*self.column, self.tenant.as_deref()).hash(h);
    }
}

/// A borrowed [`Place`], for lookups without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PlaceRef<'a>(pub &'a str, pub &'a str, pub Option<&'a str>);

impl Equivalent<Place> for PlaceRef<'_> {
    fn equivalent(&self, key: &Place) -> bool {
        self.0 == &*key.table && self.1 == &*key.column && self.2 == key.tenant.as_deref()
    }
}

impl PlaceRef<'_> {
    fn owned(self) -> Place {
        Place {
            table: self.0.into(),
            column: self.1.into(),
            tenant: self.2.map(Into::into),
        }
    }
}

/// Where values go → the active key that seals them.
#[derive(Debug, Default)]
pub(crate) struct SealFront {
    map: ArcSwap<HashMap<Place, Arc<ActiveKey>>>,
}

impl SealFront {
    /// Run `f` on the active key of `place`, if the front has one that is not
    /// revoked.
    #[inline]
    pub fn with<R>(&self, place: PlaceRef<'_>, f: impl FnOnce(&Arc<ActiveKey>) -> R) -> Option<R> {
        let map = self.map.load();
        let hit = map.get(&place)?;
        if hit.is_revoked() {
            return None;
        }
        Some(f(hit))
    }

    /// Point `place` at `key`. Revoked entries are dropped when the map has
    /// grown past `prune_above` entries.
    pub fn put(&self, place: PlaceRef<'_>, key: &Arc<ActiveKey>, prune_above: usize) {
        let owned = place.owned();
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            if m.len() >= prune_above {
                m.retain(|_, v| !v.is_revoked());
            }
            m.insert(owned.clone(), key.clone());
            m
        });
    }

    /// Drop every entry that seals under data key `id` (revoked), so no copy
    /// of the key stays reachable from the front.
    pub fn remove_key(&self, id: KeyId) {
        let holds = |m: &HashMap<Place, Arc<ActiveKey>>| m.values().any(|a| a.id() == id);
        if !holds(&self.map.load()) {
            return;
        }
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.retain(|_, a| a.id() != id);
            m
        });
    }

    /// Forget every entry (the envelope rotated all active keys).
    pub fn clear(&self) {
        self.map.store(Arc::default());
    }
}

/// Key id → unwrapped data key.
#[derive(Debug, Default)]
pub(crate) struct OpenFront {
    map: ArcSwap<HashMap<KeyId, Arc<CachedKey>>>,
}

impl OpenFront {
    /// Run `f` on the cached key `id`, if present and not revoked.
    #[inline]
    pub fn with<R>(&self, id: KeyId, f: impl FnOnce(&Arc<CachedKey>) -> R) -> Option<R> {
        let map = self.map.load();
        let hit = map.get(&id)?;
        if hit.is_revoked() {
            return None;
        }
        Some(f(hit))
    }

    /// Publish `key` as the cached key `id`.
    pub fn put(&self, id: KeyId, key: &Arc<CachedKey>) {
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(id, key.clone());
            m
        });
    }

    /// Remove the entry of `id` if it is `key` (an eviction must not remove a
    /// newer entry that replaced it).
    pub fn remove_if_same(&self, id: KeyId, key: &Arc<CachedKey>) {
        if !self
            .map
            .load()
            .get(&id)
            .is_some_and(|v| Arc::ptr_eq(v, key))
        {
            return;
        }
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            if m.get(&id).is_some_and(|v| Arc::ptr_eq(v, key)) {
                m.remove(&id);
            }
            m
        });
    }

    /// Remove the entry of `id`, whatever it is.
    pub fn remove(&self, id: KeyId) {
        if !self.map.load().contains_key(&id) {
            return;
        }
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&id);
            m
        });
    }
}
