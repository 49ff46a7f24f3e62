//! Bring your own key: per-tenant master keyrings.
//!
//! A SaaS application may have to wrap one tenant's keys under a master key
//! that tenant controls (its own KMS key, possibly in its own AWS account), so
//! that the tenant can revoke the application's access, or crypto-shred its
//! data including backups by scheduling the key's deletion. [`TenantKeyrings`]
//! routes every key of a mapped tenant to that tenant's keyring and everything
//! else to the default one. The mapping is configuration the application
//! supplies ([`crate::EnvelopeBuilder::tenant_keyring`]), not code.
//!
//! A mapped tenant's keyring failing (key disabled, access revoked, region
//! down) fails that tenant alone, with [`Error::TenantKeyring`] naming it; the
//! default keyring is never tried for a mapped tenant's keys.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{GeneratedKey, Keyring};
use crate::error::{Error, Result};
use crate::key::{KeyContext, KeyMaterial, MasterKeyId, WrappedKey};

/// A default keyring plus one keyring per mapped tenant. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct TenantKeyrings {
    default: Arc<dyn Keyring>,
    tenants: HashMap<String, Arc<dyn Keyring>>,
}

impl TenantKeyrings {
    /// Route the keys of each listed tenant to its keyring, everything else to
    /// `default`. Refuses a tenant listed twice.
    pub fn new(
        default: Arc<dyn Keyring>,
        tenants: impl IntoIterator<Item = (String, Arc<dyn Keyring>)>,
    ) -> Result<Self> {
        let mut map = HashMap::new();
        for (t, k) in tenants {
            if map.insert(t.clone(), k).is_some() {
                return Err(Error::Config(format!("tenant {t:?} is given two keyrings")));
            }
        }
        Ok(TenantKeyrings {
            default,
            tenants: map,
        })
    }

    /// The tenants with a keyring of their own.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    fn route(&self, ctx: &KeyContext) -> (Option<&str>, &Arc<dyn Keyring>) {
        match ctx
            .tenant
            .as_deref()
            .and_then(|t| self.tenants.get_key_value(t))
        {
            Some((t, k)) => (Some(t.as_str()), k),
            None => (None, &self.default),
        }
    }

    fn name<T>(tenant: Option<&str>, r: Result<T>) -> Result<T> {
        match tenant {
            Some(t) => r.map_err(|e| Error::TenantKeyring {
                tenant: t.to_owned(),
                source: Box::new(e),
            }),
            None => r,
        }
    }
}

#[async_trait]
impl Keyring for TenantKeyrings {
    fn master_keys(&self) -> Vec<MasterKeyId> {
        let mut all = self.default.master_keys();
        for k in self.tenants.values() {
            for m in k.master_keys() {
                if !all.contains(&m) {
                    all.push(m);
                }
            }
        }
        all
    }

    fn can_unwrap(&self, master_key: &MasterKeyId) -> bool {
        self.default.can_unwrap(master_key)
            || self.tenants.values().any(|k| k.can_unwrap(master_key))
    }

    async fn generate(&self, ctx: &KeyContext) -> Result<GeneratedKey> {
        let (t, k) = self.route(ctx);
        Self::name(t, k.generate(ctx).await)
    }

    async fn wrap(&self, ctx: &KeyContext, material: &KeyMaterial) -> Result<Vec<WrappedKey>> {
        let (t, k) = self.route(ctx);
        Self::name(t, k.wrap(ctx, material).await)
    }

    async fn unwrap(&self, ctx: &KeyContext, wrapped: &[WrappedKey]) -> Result<KeyMaterial> {
        let (t, k) = self.route(ctx);
        Self::name(t, k.unwrap(ctx, wrapped).await)
    }

    async fn rewrap(
        &self,
        ctx: &KeyContext,
        wrapped: &WrappedKey,
        target: &MasterKeyId,
    ) -> Result<WrappedKey> {
        let (t, k) = self.route(ctx);
        Self::name(t, k.rewrap(ctx, wrapped, target).await)
    }
}
