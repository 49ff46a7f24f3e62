//! Keyrings: who wraps and unwraps data keys.
//!
//! A keyring holds one or more master keys and does three things with data
//! keys: generate a fresh one wrapped under all its master keys, unwrap a stored
//! one, and wrap existing key material under its master keys (to add a master
//! key, or to move from one master key to another). The trait is async and
//! object-safe; the [`crate::Envelope`] holds an `Arc<dyn Keyring>`.
//!
//! Providers:
//! - [`LocalKeyring`]: AES-256-GCM key-encryption keys from a file or an
//!   environment variable, for development, tests and embedded use.
//! - `KmsKeyring` (feature `aws-kms`): AWS KMS; the master key never leaves KMS.
//! - [`MultiKeyring`]: wraps every key under several keyrings (regions,
//!   break-glass local key) and unwraps through the first that answers.
//! - [`TenantKeyrings`]: bring your own key, one keyring per mapped tenant.
//!
//! Keyrings wrap the keys at the top of the key tree (branch keys and index
//! keys, see [`crate::hierarchy`]), and unwrap data keys of releases before
//! branch keys, which were wrapped directly.

#[cfg(feature = "aws-kms")]
pub mod kms;
pub mod local;
pub mod multi;
pub mod tenant;

#[cfg(feature = "aws-kms")]
pub use kms::{KmsConfig, KmsKeyring, KmsKeyringBuilder, KmsMetrics, KmsOperation};
pub use local::LocalKeyring;
pub use multi::MultiKeyring;
pub use tenant::TenantKeyrings;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::{KeyContext, KeyMaterial, MasterKeyId, WrappedKey};

/// A fresh data key: the plaintext material (for this process only) and its
/// wrapped forms, one per master key, to be stored.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The plaintext key. Zeroized on drop.
    pub material: KeyMaterial,
    /// One wrapped blob per master key of the keyring, primary first.
    pub wrapped: Vec<WrappedKey>,
}

/// A provider of master keys. See the [module documentation](self).
#[async_trait]
pub trait Keyring: Send + Sync + std::fmt::Debug {
    /// The master keys this keyring wraps new data keys under, primary first.
    fn master_keys(&self) -> Vec<MasterKeyId>;

    /// Whether this keyring can unwrap blobs made by `master_key`.
    fn can_unwrap(&self, master_key: &MasterKeyId) -> bool;

    /// Generate a new data key bound to `ctx`, wrapped under every master key.
    async fn generate(&self, ctx: &KeyContext) -> Result<GeneratedKey>;

    /// Wrap existing key material bound to `ctx` under every master key of this
    /// keyring.
    async fn wrap(&self, ctx: &KeyContext, material: &KeyMaterial) -> Result<Vec<WrappedKey>>;

    /// Unwrap a data key bound to `ctx`. `wrapped` holds every blob the key store
    /// has for the key; the keyring picks those it can use, in its order of
    /// preference, and fails over between them.
    async fn unwrap(&self, ctx: &KeyContext, wrapped: &[WrappedKey]) -> Result<KeyMaterial>;

    /// Re-wrap `wrapped` under `target`, one of this keyring's master keys. The
    /// default unwraps and wraps again; KMS overrides it with ReEncrypt, so the
    /// plaintext never leaves KMS.
    async fn rewrap(
        &self,
        ctx: &KeyContext,
        wrapped: &WrappedKey,
        target: &MasterKeyId,
    ) -> Result<WrappedKey> {
        let material = self.unwrap(ctx, std::slice::from_ref(wrapped)).await?;
        let all = self.wrap(ctx, &material).await?;
        all.into_iter()
            .find(|w| &w.master_key == target)
            .ok_or_else(|| {
                crate::Error::Config(format!("master key {target} is not part of this keyring"))
            })
    }
}

#[async_trait]
impl<K: Keyring + ?Sized> Keyring for std::sync::Arc<K> {
    fn master_keys(&self) -> Vec<MasterKeyId> {
        (**self).master_keys()
    }
    fn can_unwrap(&self, master_key: &MasterKeyId) -> bool {
        (**self).can_unwrap(master_key)
    }
    async fn generate(&self, ctx: &KeyContext) -> Result<GeneratedKey> {
        (**self).generate(ctx).await
    }
    async fn wrap(&self, ctx: &KeyContext, material: &KeyMaterial) -> Result<Vec<WrappedKey>> {
        (**self).wrap(ctx, material).await
    }
    async fn unwrap(&self, ctx: &KeyContext, wrapped: &[WrappedKey]) -> Result<KeyMaterial> {
        (**self).unwrap(ctx, wrapped).await
    }
    async fn rewrap(
        &self,
        ctx: &KeyContext,
        wrapped: &WrappedKey,
        target: &MasterKeyId,
    ) -> Result<WrappedKey> {
        (**self).rewrap(ctx, wrapped, target).await
    }
}
