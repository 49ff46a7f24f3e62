//! Minting and unwrapping the key tree: data keys under branch keys, branch
//! keys and index keys under master keys.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use zeroize::Zeroizing;

use super::Envelope;
use crate::cache::{ActiveKey, CachedBranch, CachedKey, Loaded, bump, load_through};
use crate::clock::ms;
use crate::error::{Error, KeyOperation, Result};
use crate::hierarchy::{BranchKey, BranchScope, slot};
use crate::key::{DataKey, KeyContext, KeyId, KeyKind, KeyMaterial, KeyState};
use crate::store::{Activation, KeyFilter, KeyRecord, NewKey, Reserved};

/// A pending shared key whose owner has not activated it for this long is
/// presumed dead and may be taken over.
const STALE_PENDING: Duration = Duration::from_secs(60);
/// How long to wait for another process minting the first branch or index
/// key of a scope before giving up (retryable).
const WAIT_FOR_PEER: Duration = Duration::from_secs(15);
const PEER_POLL: Duration = Duration::from_millis(50);

/// How many times a data key's mint chooses its branch key when the one it
/// chose stops being active before the data key is activated under it.
const MINT_ATTEMPTS: u32 = 3;

/// An unwrapped blind-index key: 32 bytes that key the HMAC of one index of
/// one table and tenant (zeroized on drop, never printed).
pub struct IndexKey {
    id: KeyId,
    material: Zeroizing<[u8; 32]>,
    /// When it was unwrapped (the envelope's clock): the cache serves it for
    /// the branch TTL, then reads its state again.
    loaded: Duration,
    /// When a reload last failed during a keyring outage (nanoseconds of the
    /// clock; 0: never).
    failed_at: AtomicU64,
}

impl Loaded for IndexKey {
    fn loaded(&self) -> Duration {
        self.loaded
    }
    fn failed_at(&self) -> &AtomicU64 {
        &self.failed_at
    }
    fn key_id(&self) -> Option<KeyId> {
        Some(self.id)
    }
}

impl IndexKey {
    /// The key's id in the key store.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key bytes. Handle with care: feed them to a MAC, copy them nowhere.
    pub fn expose(&self) -> &[u8; 32] {
        &self.material
    }
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Envelope {
    /// Unwrap a key wrapped by master keys (branch key, index key, or a data
    /// key of a release before branch keys) through the keyring, within the
    /// envelope's bound on concurrent keyring calls.
    pub(crate) async fn keyring_unwrap(&self, record: &KeyRecord) -> Result<KeyMaterial> {
        let inner = &*self.inner;
        if record.wrapped.is_empty() {
            return Err(Error::KeyNotUsable {
                id: record.id,
                state: record.state,
                operation: KeyOperation::Decrypt,
            });
        }
        let _permit = inner
            .keyring_permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        bump(&inner.counters.keyring_unwrap_calls);
        inner
            .keyring
            .unwrap(&record.context(), &record.wrapped)
            .await
            .inspect_err(|_| bump(&inner.counters.keyring_failures))
    }

    /// Generate a key under the master keyring (bounded like unwraps).
    async fn keyring_generate(&self, ctx: &KeyContext) -> Result<crate::keyring::GeneratedKey> {
        let inner = &*self.inner;
        let _permit = inner
            .keyring_permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        bump(&inner.counters.keyring_generate_calls);
        inner
            .keyring
            .generate(ctx)
            .await
            .inspect_err(|_| bump(&inner.counters.keyring_failures))
    }

    /// The unwrapped branch key `id`: once per process per branch TTL (one
    /// keyring call, single-flight), refused unless it can decrypt.
    pub(crate) async fn branch_key(&self, id: KeyId) -> Result<Arc<BranchKey>> {
        Ok(self.branch_entry(id).await?.key.clone())
    }

    /// The branch cache entry of `id` (the key and when it was loaded).
    pub(crate) async fn branch_entry(&self, id: KeyId) -> Result<Arc<CachedBranch>> {
        let inner = &*self.inner;
        let l = &inner.cache.limits;
        load_through(
            &inner.cache.branches,
            id,
            inner.clock.coarse(),
            inner.clock.coarse_resolution(),
            l.branch_ttl,
            l.outage_grace,
            &inner.counters,
            |_| false,
            || async move {
                let record = inner.store.get(id).await?.ok_or(Error::UnknownKey(id))?;
                if record.kind != KeyKind::Branch {
                    return Err(Error::UnknownKey(id));
                }
                if !record.state.can_decrypt() {
                    return Err(Error::KeyNotUsable {
                        id,
                        state: record.state,
                        operation: KeyOperation::Decrypt,
                    });
                }
                let material = self.keyring_unwrap(&record).await?;
                Ok(Arc::new(CachedBranch {
                    key: Arc::new(BranchKey::new(id, &material)),
                    loaded: inner.clock.coarse(),
                    failed_at: Default::default(),
                }))
            },
            |_| {},
        )
        .await
    }

    /// The branch key new data keys of `bs` are wrapped under: the newest
    /// active one while younger than the rotation age (by the store's clock),
    /// else a new one. Concurrent processes agree on one successor through its
    /// slot; while another process mints it, the current one keeps serving.
    async fn sealing_branch(&self, bs: &BranchScope) -> Result<Arc<BranchKey>> {
        let inner = &*self.inner;
        let waited_since = inner.clock.now();
        loop {
            let now = inner.store.now_ms().await?;
            let all = inner
                .store
                .list(
                    &KeyFilter::all()
                        .kind(KeyKind::Branch)
                        .scope(bs.scope())
                        .tenant(bs.tenant()),
                )
                .await?;
            let newest = all.iter().max_by_key(|r| r.id);
            let current = all
                .iter()
                .filter(|r| r.state == KeyState::Active)
                .max_by_key(|r| r.id);
            let rotation = ms(inner.branch_rotation);
            if let Some(c) = current
                && now.saturating_sub(c.created_ms) < rotation
            {
                return self.branch_key(c.id).await;
            }
            match newest {
                Some(p) if p.state == KeyState::Pending => {
                    let stale_before = now.saturating_sub(ms(STALE_PENDING));
                    if p.created_ms < stale_before
                        && inner
                            .store
                            .take_over(p.id, &inner.owner, stale_before)
                            .await?
                    {
                        return self.finish_branch(p.id, bs, current.map(|c| c.id)).await;
                    }
                    if let Some(c) = current {
                        // Another process is minting the successor.
                        return self.branch_key(c.id).await;
                    }
                    if inner.clock.now().saturating_sub(waited_since) > WAIT_FOR_PEER {
                        return Err(Error::KeyringUnavailable {
                            master_key: String::new(),
                            message: format!(
                                "another process has been minting branch key #{} for {} for too long; try again",
                                p.id.get(),
                                describe(bs)
                            ),
                            source: None,
                        });
                    }
                    tokio::time::sleep(PEER_POLL).await;
                }
                _ => {
                    let slot = bs.successor_slot(newest.map(|r| r.id));
                    let new = NewKey {
                        kind: KeyKind::Branch,
                        scope: bs.scope(),
                        tenant: bs.tenant(),
                        slot: Some(&slot),
                        owner: &inner.owner,
                    };
                    match inner.store.reserve(&new).await? {
                        Reserved::Mine(id) => {
                            return self.finish_branch(id, bs, current.map(|c| c.id)).await;
                        }
                        // Another process reserved it first: look again.
                        Reserved::Taken(_) => continue,
                    }
                }
            }
        }
    }

    /// Generate, store and activate the reserved branch key `id`, then demote
    /// its predecessor. If the keyring fails, the reservation is deleted, and a
    /// predecessor that is merely old keeps serving (rotation by age is a
    /// policy, not a safety limit).
    async fn finish_branch(
        &self,
        id: KeyId,
        bs: &BranchScope,
        predecessor: Option<KeyId>,
    ) -> Result<Arc<BranchKey>> {
        let inner = &*self.inner;
        let ctx = KeyContext::of(KeyKind::Branch, bs.scope(), bs.tenant(), id);
        let generated = match self.keyring_generate(&ctx).await {
            Ok(g) => g,
            Err(e) => {
                self.abandon(id).await;
                if let Some(p) = predecessor
                    && e.is_retryable()
                {
                    tracing::warn!(target: "sqlx_envelope::keys", branch_key = p.get(), error = %e, "keyring unavailable; keeping the old branch key past its rotation age");
                    return self.branch_key(p).await;
                }
                return Err(e);
            }
        };
        let activation = Activation {
            wrapped: &generated.wrapped,
            parent: None,
            seal_window: Duration::ZERO,
        };
        if let Err(e) = inner.store.activate(id, &inner.owner, &activation).await {
            self.abandon(id).await;
            return Err(activation_failed(id, e, KeyOperation::Encrypt));
        }
        bump(&inner.counters.branch_keys_minted);
        if let Some(p) = predecessor {
            self.demote(p).await;
        }
        tracing::info!(target: "sqlx_envelope::keys", branch_key = id.get(), scope = bs.scope(), "minted branch key");
        let key = Arc::new(BranchKey::new(id, &generated.material));
        inner
            .cache
            .branches
            .insert(
                id,
                Arc::new(CachedBranch {
                    key: key.clone(),
                    loaded: inner.clock.coarse(),
                    failed_at: Default::default(),
                }),
            )
            .await;
        Ok(key)
    }

    /// Mint a data key for `scope` and `tenant`: generated locally, wrapped by
    /// the branch key (no keyring call unless the branch key itself must be
    /// minted or unwrapped), reserved, stored and activated with its horizon
    /// (`seal_window` after activation) before it is returned. A keyring outage
    /// leaves no row behind: the branch key is resolved before anything is
    /// reserved.
    pub(crate) async fn mint_data_key(
        &self,
        scope: &str,
        tenant: Option<&str>,
        seal_window: Duration,
    ) -> Result<Arc<ActiveKey>> {
        let inner = &*self.inner;
        let mut attempt = 1;
        let (id, material, branch, born) = loop {
            let branch = self.sealing_branch(&BranchScope::of(scope, tenant)).await?;
            let new = NewKey {
                kind: KeyKind::Data,
                scope,
                tenant,
                slot: None,
                owner: &inner.owner,
            };
            let Reserved::Mine(id) = inner.store.reserve(&new).await? else {
                return Err(Error::Config("a data key has no slot".into()));
            };
            let material = KeyMaterial::generate();
            let blob = branch.wrap(&KeyContext::data(scope, tenant, id), &material);
            // Born before activation: this process stops sealing under the key
            // no later than the horizon the store records.
            let born = inner.clock.coarse();
            let activation = Activation {
                wrapped: &[],
                parent: Some((branch.id(), &blob)),
                seal_window,
            };
            match inner.store.activate(id, &inner.owner, &activation).await {
                Ok(()) => break (id, material, branch, born),
                // The branch key stopped being active after it was chosen (an
                // operator suspended it, another process rotated it out): choose
                // again, from the store.
                // (A destroyed one is the tenant's shred: the mint fails.)
                Err(Error::KeyNotUsable {
                    id: parent,
                    state: KeyState::DecryptOnly | KeyState::Retired,
                    ..
                }) if parent == branch.id() && attempt < MINT_ATTEMPTS => {
                    self.abandon(id).await;
                    attempt += 1;
                }
                Err(e) => {
                    self.abandon(id).await;
                    return Err(activation_failed(id, e, KeyOperation::Encrypt));
                }
            }
        };
        bump(&inner.counters.data_keys_minted);
        let key = Arc::new(DataKey::new(id, &material));
        let cached = Arc::new(CachedKey::new(key.clone(), born));
        inner.cache.unwrapped.insert(id, cached.clone()).await;
        inner.cache.open_front.put(id, &cached);
        tracing::debug!(target: "sqlx_envelope::keys", key_id = id.get(), branch_key = branch.id().get(), scope, "minted data key");
        Ok(Arc::new(ActiveKey::new(key, born)))
    }

    /// Delete a reservation of this envelope after a failed mint (best effort:
    /// `KeyStore::cleanup_pending` removes what is left when the store is
    /// unreachable too).
    async fn abandon(&self, id: KeyId) {
        if let Err(e) = self.inner.store.abandon(id, &self.inner.owner).await {
            tracing::warn!(target: "sqlx_envelope::keys", key_id = id.get(), error = %e, "could not delete the reservation of a failed mint; `keys cleanup-pending` removes it");
        }
    }

    /// Mark a key this process no longer seals with as decrypt-only, only if
    /// it is still active (compare-and-set: an operator's retire or destroy is
    /// never undone).
    pub(crate) async fn demote(&self, id: KeyId) {
        match self
            .inner
            .store
            .transition(id, KeyState::Active, KeyState::DecryptOnly)
            .await
        {
            Ok(()) | Err(Error::StateConflict { .. }) => {}
            Err(e) => {
                tracing::warn!(target: "sqlx_envelope::keys", key_id = id.get(), error = %e, "could not mark a rotated key decrypt-only");
            }
        }
    }

    /// The blind-index key of index `index` of `table` for `tenant`, version
    /// `version`: created on first use (one keyring call; concurrent processes
    /// agree on one key through its slot), then cached like an unwrapped
    /// branch key (it is wrapped by the master key like one): for the branch
    /// TTL, after which its state is read again and it is unwrapped anew (so a
    /// key destroyed by another process, as by [`Envelope::shred_tenant`],
    /// stops serving here within that TTL), served past it only within the
    /// outage grace while the keyring is unavailable. Index keys are
    /// separate from data keys and never rotate by age: a new version is a new
    /// key (and a new index column).
    pub async fn index_key(
        &self,
        table: &str,
        index: &str,
        tenant: Option<&str>,
        version: u32,
    ) -> Result<Arc<IndexKey>> {
        let inner = &*self.inner;
        let slot = slot(
            KeyKind::Index,
            &[
                table.as_bytes(),
                index.as_bytes(),
                tenant.unwrap_or("").as_bytes(),
                if tenant.is_some() { b"t" } else { b"-" },
                &version.to_be_bytes(),
            ],
        );
        let l = &inner.cache.limits;
        let now = inner.clock.coarse();
        let slack = inner.clock.coarse_resolution();
        if let Some(k) = inner.index_keys.get(&slot).await
            && !crate::cache::reached(now, slack, k.loaded, l.branch_ttl)
        {
            return Ok(k);
        }
        let scope = format!("{table}/{index}/v{version}");
        let (slot_ref, scope_ref) = (slot.as_str(), scope.as_str());
        let loaded = load_through(
            &inner.index_keys,
            slot.clone(),
            now,
            slack,
            l.branch_ttl,
            l.outage_grace,
            &inner.counters,
            |_| false,
            || self.load_index_key(slot_ref, scope_ref, tenant),
            |_| {},
        )
        .await;
        if let Err(Error::KeyNotUsable { .. }) = &loaded {
            // No longer usable: let go of the material at once (through the
            // slot's single-flight entry, ordered with its loads).
            self.forget_index_slot(&slot).await;
        }
        loaded
    }

    /// Drop the cached index key of `slot`, after any load of it in flight
    /// (which runs in the same single-flight entry) has finished: a load that
    /// read the key's record before a state change cannot keep it cached.
    pub(crate) async fn forget_index_slot(&self, slot: &str) {
        self.inner
            .index_keys
            .entry(slot.to_owned())
            .and_compute_with(|_| async { moka::ops::compute::Op::Remove })
            .await;
        // Let moka drop what it removed now, not at its next maintenance.
        self.inner.index_keys.run_pending_tasks().await;
    }

    async fn load_index_key(
        &self,
        slot: &str,
        scope: &str,
        tenant: Option<&str>,
    ) -> Result<Arc<IndexKey>> {
        let inner = &*self.inner;
        let waited_since = inner.clock.now();
        loop {
            // Read before the key's record, so that its TTL counts from no
            // later than the state it was loaded in.
            let loaded = inner.clock.coarse();
            let holder = match inner.store.find_slot(slot).await? {
                Some(r) => r,
                None => {
                    let new = NewKey {
                        kind: KeyKind::Index,
                        scope,
                        tenant,
                        slot: Some(slot),
                        owner: &inner.owner,
                    };
                    match inner.store.reserve(&new).await? {
                        Reserved::Mine(id) => {
                            return self.finish_index_key(id, scope, tenant, loaded).await;
                        }
                        Reserved::Taken(r) => *r,
                    }
                }
            };
            match holder.state {
                KeyState::Pending => {
                    let now = inner.store.now_ms().await?;
                    let stale_before = now.saturating_sub(ms(STALE_PENDING));
                    if holder.created_ms < stale_before
                        && inner
                            .store
                            .take_over(holder.id, &inner.owner, stale_before)
                            .await?
                    {
                        return self
                            .finish_index_key(holder.id, scope, tenant, loaded)
                            .await;
                    }
                    if inner.clock.now().saturating_sub(waited_since) > WAIT_FOR_PEER {
                        return Err(Error::KeyringUnavailable {
                            master_key: String::new(),
                            message: format!(
                                "another process has been minting index key #{} for too long; try again",
                                holder.id.get()
                            ),
                            source: None,
                        });
                    }
                    tokio::time::sleep(PEER_POLL).await;
                }
                state if state.can_decrypt() => {
                    let material = self.keyring_unwrap(&holder).await?;
                    return Ok(Arc::new(IndexKey {
                        id: holder.id,
                        material: Zeroizing::new(*material.expose()),
                        loaded,
                        failed_at: AtomicU64::new(0),
                    }));
                }
                state => {
                    return Err(Error::KeyNotUsable {
                        id: holder.id,
                        state,
                        operation: KeyOperation::Index,
                    });
                }
            }
        }
    }

    /// Mint index key `id` (reserved by this process, or taken over), loaded
    /// as of `loaded` (read before its slot was).
    async fn finish_index_key(
        &self,
        id: KeyId,
        scope: &str,
        tenant: Option<&str>,
        loaded: Duration,
    ) -> Result<Arc<IndexKey>> {
        let inner = &*self.inner;
        let ctx = KeyContext::of(KeyKind::Index, scope, tenant, id);
        let generated = match self.keyring_generate(&ctx).await {
            Ok(g) => g,
            Err(e) => {
                self.abandon(id).await;
                return Err(e);
            }
        };
        let activation = Activation {
            wrapped: &generated.wrapped,
            parent: None,
            seal_window: Duration::ZERO,
        };
        if let Err(e) = inner.store.activate(id, &inner.owner, &activation).await {
            self.abandon(id).await;
            return Err(activation_failed(id, e, KeyOperation::Index));
        }
        Ok(Arc::new(IndexKey {
            id,
            material: Zeroizing::new(*generated.material.expose()),
            loaded,
            failed_at: AtomicU64::new(0),
        }))
    }
}

/// The error of a failed activation. A reservation an operator destroyed
/// meanwhile (its tenant was shredded) is a key that cannot be used, not a
/// lost race to retry.
fn activation_failed(id: KeyId, e: Error, operation: KeyOperation) -> Error {
    match e {
        Error::StateConflict {
            current: KeyState::Destroyed,
            ..
        } => Error::KeyNotUsable {
            id,
            state: KeyState::Destroyed,
            operation,
        },
        e => e,
    }
}

fn describe(bs: &BranchScope) -> String {
    match bs.tenant() {
        Some(t) => format!("tenant {t:?}"),
        None => format!("scope {:?}", bs.scope()),
    }
}
