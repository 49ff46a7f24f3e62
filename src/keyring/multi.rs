//! Several keyrings acting as one.
//!
//! A [`MultiKeyring`] wraps every key it is given (branch and index keys) under the master keys of all its
//! members (for example one KMS key per region, plus a local break-glass key) and
//! unwraps through the members in order, failing over to the next when one is
//! unavailable or refuses. Put the member closest to the application first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{GeneratedKey, Keyring};
use crate::error::{Error, Result};
use crate::key::{KeyContext, KeyMaterial, MasterKeyId, WrappedKey};

/// Several keyrings, the first one generating. See the [module documentation](crate::keyring::multi).
#[derive(Debug)]
pub struct MultiKeyring {
    members: Vec<Arc<dyn Keyring>>,
    failovers: AtomicU64,
}

impl MultiKeyring {
    /// Combine keyrings; the first generates data keys and is tried first on
    /// unwrap.
    pub fn new(members: Vec<Arc<dyn Keyring>>) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::Config(
                "a multi-keyring needs at least one member".into(),
            ));
        }
        Ok(MultiKeyring {
            members,
            failovers: AtomicU64::new(0),
        })
    }

    /// How many unwraps succeeded only after an earlier member failed.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Keyring for MultiKeyring {
    fn master_keys(&self) -> Vec<MasterKeyId> {
        self.members.iter().flat_map(|m| m.master_keys()).collect()
    }

    fn can_unwrap(&self, master_key: &MasterKeyId) -> bool {
        self.members.iter().any(|m| m.can_unwrap(master_key))
    }

    async fn generate(&self, ctx: &KeyContext) -> Result<GeneratedKey> {
        let mut generated = self.members[0].generate(ctx).await?;
        for m in &self.members[1..] {
            generated
                .wrapped
                .extend(m.wrap(ctx, &generated.material).await?);
        }
        Ok(generated)
    }

    async fn wrap(&self, ctx: &KeyContext, material: &KeyMaterial) -> Result<Vec<WrappedKey>> {
        let mut out = Vec::new();
        for m in &self.members {
            out.extend(m.wrap(ctx, material).await?);
        }
        Ok(out)
    }

    async fn unwrap(&self, ctx: &KeyContext, wrapped: &[WrappedKey]) -> Result<KeyMaterial> {
        let mut first_error: Option<Error> = None;
        let mut attempts = 0u32;
        for m in &self.members {
            let mine: Vec<WrappedKey> = wrapped
                .iter()
                .filter(|w| m.can_unwrap(&w.master_key))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            attempts += 1;
            match m.unwrap(ctx, &mine).await {
                Ok(material) => {
                    if attempts > 1 {
                        self.failovers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            target: "sqlx_envelope::keyring",
                            key_id = ctx.key_id.get(),
                            attempts,
                            "unwrapped data key after failing over"
                        );
                    }
                    return Ok(material);
                }
                Err(e) => {
                    tracing::warn!(target: "sqlx_envelope::keyring", key_id = ctx.key_id.get(), error = %e, "keyring member failed, trying the next");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| {
            Error::no_usable_wrapped_key(
                self.master_keys()
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            )
        }))
    }

    async fn rewrap(
        &self,
        ctx: &KeyContext,
        wrapped: &WrappedKey,
        target: &MasterKeyId,
    ) -> Result<WrappedKey> {
        // Same member for source and target: let it re-wrap natively (ReEncrypt).
        for m in &self.members {
            if m.can_unwrap(&wrapped.master_key) && m.master_keys().contains(target) {
                return m.rewrap(ctx, wrapped, target).await;
            }
        }
        let material = self.unwrap(ctx, std::slice::from_ref(wrapped)).await?;
        for m in &self.members {
            if m.master_keys().contains(target) {
                return m
                    .wrap(ctx, &material)
                    .await?
                    .into_iter()
                    .find(|w| &w.master_key == target)
                    .ok_or_else(|| Error::Config(format!("member did not wrap under {target}")));
            }
        }
        Err(Error::Config(format!(
            "master key {target} is not part of this keyring"
        )))
    }
}
