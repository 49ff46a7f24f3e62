//! A per-thread front for the caches.
//!
//! A moka lookup costs a hash, a concurrent-map probe, an access-time read of
//! the system clock and a read record for the eviction policy: about 150 ns,
//! more than sealing a 64-byte value. Most seals in a thread hit the same few
//! scopes and keys, so each thread remembers its last few entries and uses them
//! directly. moka stays the authority: every entry carries a `revoked` flag that
//! is set when moka removes it (replacement, capacity, explicit invalidation),
//! and limits (age, uses, bytes, TTL) are checked on the entry itself, so the
//! front never serves what the cache would not.

use std::cell::RefCell;
use std::sync::Arc;

use super::{ActiveKey, CachedKey};
use crate::key::KeyId;

const SLOTS: usize = 8;

struct Slots {
    active: Vec<(u64, Box<str>, Arc<ActiveKey>)>,
    unwrapped: Vec<(u64, KeyId, Arc<CachedKey>)>,
    next_active: usize,
    next_unwrapped: usize,
}

thread_local! {
    static HOT: RefCell<Slots> = const {
        RefCell::new(Slots {
            active: Vec::new(),
            unwrapped: Vec::new(),
            next_active: 0,
            next_unwrapped: 0,
        })
    };
}

fn put<T>(v: &mut Vec<T>, next: &mut usize, item: T) {
    if v.len() < SLOTS {
        v.push(item);
    } else {
        v[*next] = item;
        *next = (*next + 1) % SLOTS;
    }
}

/// The remembered active key of `scope` in cache `cache`, if not revoked.
pub(crate) fn active(cache: u64, scope: &str) -> Option<Arc<ActiveKey>> {
    HOT.with(|h| {
        let mut h = h.borrow_mut();
        let i = h
            .active
            .iter()
            .position(|(c, s, _)| *c == cache && &**s == scope)?;
        if h.active[i].2.is_revoked() {
            h.active.swap_remove(i);
            h.next_active = 0;
            return None;
        }
        Some(h.active[i].2.clone())
    })
}

/// Remember `key` as the active key of `scope` in cache `cache`.
pub(crate) fn remember_active(cache: u64, scope: &str, key: &Arc<ActiveKey>) {
    HOT.with(|h| {
        let mut h = h.borrow_mut();
        let h = &mut *h;
        if let Some(slot) = h
            .active
            .iter_mut()
            .find(|(c, s, _)| *c == cache && &**s == scope)
        {
            slot.2 = key.clone();
        } else {
            put(
                &mut h.active,
                &mut h.next_active,
                (cache, scope.into(), key.clone()),
            );
        }
    });
}

/// The remembered unwrapped key `id` of cache `cache`, if not revoked.
pub(crate) fn unwrapped(cache: u64, id: KeyId) -> Option<Arc<CachedKey>> {
    HOT.with(|h| {
        let mut h = h.borrow_mut();
        let i = h
            .unwrapped
            .iter()
            .position(|(c, k, _)| *c == cache && *k == id)?;
        if h.unwrapped[i].2.is_revoked() {
            h.unwrapped.swap_remove(i);
            h.next_unwrapped = 0;
            return None;
        }
        Some(h.unwrapped[i].2.clone())
    })
}

/// Remember the unwrapped key `id` of cache `cache`.
pub(crate) fn remember_unwrapped(cache: u64, id: KeyId, key: &Arc<CachedKey>) {
    HOT.with(|h| {
        let mut h = h.borrow_mut();
        let h = &mut *h;
        if let Some(slot) = h
            .unwrapped
            .iter_mut()
            .find(|(c, k, _)| *c == cache && *k == id)
        {
            slot.2 = key.clone();
        } else {
            put(
                &mut h.unwrapped,
                &mut h.next_unwrapped,
                (cache, id, key.clone()),
            );
        }
    });
}
