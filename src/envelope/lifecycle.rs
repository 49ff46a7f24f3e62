//! Key states from the application's side: operator transitions, revocation
//! of this process's cached copies, and crypto-shredding a tenant.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use moka::ops::compute::Op;

use super::Envelope;
use crate::error::{Error, KeyOperation, Result};
use crate::key::{KeyId, KeyKind, KeyState};
use crate::store::{KeyFilter, KeyRecord};

/// How many times [`Envelope::shred_tenant`] lists a tenant's keys at most:
/// again after each pass that destroyed something, for keys reserved while it
/// ran.
const SHRED_PASSES: usize = 4;

/// What [`Envelope::shred_tenant`] destroyed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShredReport {
    /// The tenant.
    pub tenant: String,
    /// Data keys destroyed by this call.
    pub data_keys: u64,
    /// Branch keys destroyed by this call.
    pub branch_keys: u64,
    /// Index keys destroyed by this call.
    pub index_keys: u64,
    /// Keys that were already destroyed.
    pub already_destroyed: u64,
    /// Master keys that wrapped the tenant's branch and index keys (schedule
    /// their deletion to make backups unreadable too, if they serve this tenant
    /// alone).
    pub master_keys: Vec<String>,
}

impl Envelope {
    /// Every data key in the store.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.inner
            .store
            .list(&KeyFilter::all().kind(KeyKind::Data))
            .await
    }

    /// Move a key from the state it is in now to `state` (compare-and-set in the
    /// store, see [`KeyState::may_become`]), and drop it from this process's
    /// caches. `Destroyed` is final and deletes the wrapped key material. Other
    /// processes see the change when their cache entries expire (data keys:
    /// max age, decrypt TTL; branch and index keys: branch TTL). Fails with
    /// [`Error::StateConflict`] when another process or operator changed the
    /// key between the read and the write.
    pub async fn set_key_state(&self, id: KeyId, state: KeyState) -> Result<()> {
        let record = self.record(id).await?;
        if record.state == state {
            // Another process or an earlier call made the change: this
            // process's copies go all the same (an active key stays).
            if state != KeyState::Active {
                self.forget_record(&record).await;
            }
            return Ok(());
        }
        self.move_key(&record, state).await
    }

    /// Move key `id` from `from` to `to` only if it is in `from` now
    /// (compare-and-set in the store, see [`KeyState::may_become`]), and drop
    /// it from this process's caches. Unlike [`Envelope::set_key_state`], which
    /// moves the key from whatever state it is in, this fails with
    /// [`Error::StateConflict`] when the key is no longer in the state the
    /// caller decided on (another process or an operator changed it since),
    /// so a decision taken on a state read earlier never overwrites a newer one.
    pub async fn change_key_state(&self, id: KeyId, from: KeyState, to: KeyState) -> Result<()> {
        let record = self.record(id).await?;
        if record.state != from {
            return Err(Error::StateConflict {
                id,
                expected: from,
                current: record.state,
                wanted: to,
            });
        }
        self.move_key(&record, to).await
    }

    /// The store's record of key `id`.
    async fn record(&self, id: KeyId) -> Result<KeyRecord> {
        self.inner.store.get(id).await?.ok_or(Error::UnknownKey(id))
    }

    /// The compare-and-set from `record.state` to `state`, then this process's
    /// copies go.
    async fn move_key(&self, record: &KeyRecord, state: KeyState) -> Result<()> {
        let id = record.id;
        if !record.state.may_become(state) {
            return Err(Error::KeyNotUsable {
                id,
                state: record.state,
                operation: KeyOperation::ChangeState(state),
            });
        }
        self.inner.store.transition(id, record.state, state).await?;
        self.forget_record(record).await;
        Ok(())
    }

    /// Drop a key from this process's caches and fronts. The removal is
    /// ordered with loads of the same key (both run in the key's single-flight
    /// compute), so a load that started before this call cannot publish the
    /// key afterwards; once the last user of the key lets go, its material is
    /// zeroized. An index key's entry is found by its slot: given only the
    /// id, this drops the cached entries it finds, not a first load still in
    /// flight ([`Envelope::set_key_state`] and [`Envelope::shred_tenant`],
    /// which know the slot, wait for that too).
    pub async fn forget_key(&self, id: KeyId) {
        self.forget_unwrapped(id).await;
        // Any kind of key: its index-key entries too, found by their id.
        let inner = &*self.inner;
        inner.index_keys.run_pending_tasks().await;
        let slots: Vec<Arc<String>> = inner
            .index_keys
            .iter()
            .filter(|(_, k)| k.id() == id)
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            self.forget_index_slot(&slot).await;
        }
    }

    /// The data- and branch-key part of [`Envelope::forget_key`]: the
    /// unwrapped, branch and active caches and their fronts.
    async fn forget_unwrapped(&self, id: KeyId) {
        let inner = &*self.inner;
        inner.revocations.fetch_add(1, Ordering::AcqRel);
        let front = inner.cache.open_front.clone();
        inner
            .cache
            .unwrapped
            .entry(id)
            .and_compute_with(|cur| async move {
                if let Some(e) = cur {
                    e.value().revoke();
                }
                front.remove(id);
                Op::Remove
            })
            .await;
        inner
            .cache
            .branches
            .entry(id)
            .and_compute_with(|_| async { Op::Remove })
            .await;
        // Let moka drop what it removed now, not at its next maintenance.
        inner.cache.unwrapped.run_pending_tasks().await;
        inner.cache.branches.run_pending_tasks().await;
        // moka's `iter` sees only entries its maintenance has applied: apply
        // pending inserts first, or a key just cached as active is missed.
        inner.cache.active.run_pending_tasks().await;
        for (scope, a) in inner.cache.active.iter() {
            if a.id() == id {
                a.revoke();
                inner.cache.active.invalidate(&*scope).await;
            }
        }
        inner.cache.seal_front.remove_key(id);
        inner.cache.active.run_pending_tasks().await;
    }

    /// [`Envelope::forget_key`] for a key whose record is at hand, by its
    /// kind: an index key is dropped by its slot, which also waits for a load
    /// of it in flight (one that read the record before the change and is not
    /// cached yet); other keys leave the index-key cache alone. It runs as a
    /// task of its own: the change is already in the store, so a caller that
    /// stops waiting (a timeout around `set_key_state`) must not leave this
    /// process's copies behind.
    async fn forget_record(&self, record: &KeyRecord) {
        let (envelope, id, kind) = (self.clone(), record.id, record.kind);
        let slot = record.slot.clone();
        let forget = async move {
            match (kind, slot) {
                (KeyKind::Index, Some(slot)) => envelope.forget_index_slot(&slot).await,
                (KeyKind::Index, None) => envelope.forget_key(id).await,
                _ => envelope.forget_unwrapped(id).await,
            }
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // No runtime to hand it to: here, then.
            return forget.await;
        }
        if let Err(e) = tokio::spawn(forget).await
            && let Ok(panic) = e.try_into_panic()
        {
            std::panic::resume_unwind(panic);
        }
    }

    /// Drop every active key, so the next seal in each scope mints a new one.
    pub async fn rotate_active_keys(&self) {
        for (_, a) in self.inner.cache.active.iter() {
            a.revoke();
        }
        self.inner.cache.seal_front.clear();
        self.inner.cache.active.invalidate_all();
        self.inner.cache.active.run_pending_tasks().await;
    }

    /// Crypto-shred a tenant: destroy every data, branch and index key of
    /// `tenant` (compare-and-set, retried when another process changes a key
    /// meanwhile), deleting their wrapped material, and drop them from this
    /// process's caches. Afterwards every value of the tenant fails to open with
    /// [`Error::KeyNotUsable`] (state `destroyed`) in this process at once and
    /// in other processes when their cached copies expire (decrypt TTL), and
    /// its blind indexes can no longer be computed under its existing index
    /// keys (in other processes once their index keys' entries expire: branch
    /// TTL; a running index job keeps the key it started with); other tenants
    /// are not touched. Keys another process is minting meanwhile (`pending`)
    /// are destroyed too, and that process's mint fails with
    /// [`Error::KeyNotUsable`]; the tenant's keys are listed again until a
    /// pass finds none left to destroy (at most four passes). Stop the
    /// tenant's writes first: a process that still holds one of its data keys
    /// as active seals under it until its max age, and such values are lost
    /// with the key; a write that starts after this returns mints new keys
    /// for the tenant.
    ///
    /// This removes the keys from the live database and, through replication,
    /// from replicas. Backups taken before still hold the wrapped keys: only
    /// when the tenant's branch keys are wrapped by a master key of its own
    /// ([`super::EnvelopeBuilder::tenant_keyring`]) does scheduling that master
    /// key's deletion in KMS make those backups unreadable too.
    pub async fn shred_tenant(&self, tenant: &str) -> Result<ShredReport> {
        let mut report = ShredReport {
            tenant: tenant.to_owned(),
            ..ShredReport::default()
        };
        // A key another process is minting (`pending`) is destroyed too: its
        // activation, a compare-and-set from `pending`, then fails. One it
        // activated first is destroyed from `active`. The tenant's keys are
        // listed again until a pass finds none left to destroy, so a key
        // reserved while an earlier pass ran is not missed (bounded: a
        // tenant whose writes go on keeps minting; stop them first).
        let mut handled: HashSet<KeyId> = HashSet::new();
        for pass in 0..SHRED_PASSES {
            let mut keys = self
                .inner
                .store
                .list(&KeyFilter::all().tenant(Some(tenant)))
                .await?;
            // Data and index keys first, branch keys last.
            keys.sort_by_key(|r| (r.kind == KeyKind::Branch, r.id));
            for r in &keys {
                for w in &r.wrapped {
                    let m = w.master_key.to_string();
                    if !report.master_keys.contains(&m) {
                        report.master_keys.push(m);
                    }
                }
            }
            let mut destroyed_now = 0;
            for r in keys {
                if r.state == KeyState::Destroyed {
                    if pass == 0 {
                        report.already_destroyed += 1;
                    }
                    if handled.insert(r.id) {
                        self.forget_record(&r).await;
                    }
                    continue;
                }
                let mut state = r.state;
                loop {
                    match self
                        .inner
                        .store
                        .transition(r.id, state, KeyState::Destroyed)
                        .await
                    {
                        Ok(()) => {
                            match r.kind {
                                KeyKind::Data => report.data_keys += 1,
                                KeyKind::Branch => report.branch_keys += 1,
                                KeyKind::Index => report.index_keys += 1,
                            }
                            destroyed_now += 1;
                            break;
                        }
                        // Destroyed by another shred or an operator meanwhile.
                        Err(Error::StateConflict {
                            current: KeyState::Destroyed,
                            ..
                        }) => break,
                        Err(Error::StateConflict { current, .. }) => state = current,
                        // A reservation whose mint failed, deleted by its owner.
                        Err(Error::UnknownKey(_)) => break,
                        Err(e) => return Err(e),
                    }
                }
                handled.insert(r.id);
                self.forget_record(&r).await;
            }
            if destroyed_now == 0 {
                break;
            }
        }
        report.master_keys.sort();
        tracing::warn!(target: "sqlx_envelope::keys", tenant, data_keys = report.data_keys, branch_keys = report.branch_keys, index_keys = report.index_keys, "tenant crypto-shredded");
        Ok(report)
    }
}
