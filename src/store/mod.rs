//! The key store: the data-key table in the application's own database.
//!
//! One row per data key (not per value): its id (assigned by the database and
//! written into every value), the scope and tenant it serves, its state, and one
//! wrapped blob per master key in a second table. Values carry only the 8-byte key
//! id, which keeps them small and lets a cold read of many rows make one keyring
//! call per distinct data key instead of one per row.
//!
//! A data key is reserved (`pending`), wrapped with its id bound into the
//! wrapping context, then stored and activated in one transaction, all before any
//! value sealed under it is returned. A value therefore never references a key the
//! store does not hold.
//!
//! ## Migrations
//!
//! The tables are created by embedded `sqlx::migrate!` migrations (see
//! `migrations/<driver>/`) tracked in their own table, `_sqlx_envelope_migrations`,
//! so they can never collide with the application's `_sqlx_migrations`. Call
//! [`KeyStore::migrate`] at start-up (it takes the migrator's lock, so many
//! processes may call it at once), or copy the SQL files into your own migration
//! directory if you prefer a single migrator.

mod sql;

#[cfg(feature = "mysql")]
pub use sql::MySqlKeyStore;
#[cfg(feature = "postgres")]
pub use sql::PgKeyStore;
pub use sql::SqlKeyStore;
#[cfg(feature = "sqlite")]
pub use sql::SqliteKeyStore;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::{KeyContext, KeyId, KeyState, MasterKeyId, WrappedKey};

/// Name of the table that tracks this crate's migrations.
pub const MIGRATIONS_TABLE: &str = "_sqlx_envelope_migrations";

/// One data key as the key store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key id.
    pub id: KeyId,
    /// The scope it serves.
    pub scope: String,
    /// The tenant it serves.
    pub tenant: Option<String>,
    /// Its state.
    pub state: KeyState,
    /// One wrapped blob per master key (none once destroyed).
    pub wrapped: Vec<WrappedKey>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When it left the active state, milliseconds since the Unix epoch.
    pub retired_at_ms: Option<i64>,
}

impl KeyRecord {
    /// The wrapping context of this key.
    pub fn context(&self) -> KeyContext {
        KeyContext {
            scope: self.scope.clone(),
            tenant: self.tenant.clone(),
            key_id: self.id,
        }
    }
}

/// Where data keys are stored. See the [module documentation](self).
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Create or upgrade the key-store tables.
    async fn migrate(&self) -> Result<()>;

    /// Reserve a new key id in state `pending` for `scope` and `tenant`.
    async fn reserve(&self, scope: &str, tenant: Option<&str>) -> Result<KeyId>;

    /// Store the wrapped blobs of a reserved key and make it active, atomically.
    async fn activate(&self, id: KeyId, wrapped: &[WrappedKey]) -> Result<()>;

    /// Load one key with its wrapped blobs.
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>>;

    /// All keys (with their wrapped blobs), by id.
    async fn list(&self) -> Result<Vec<KeyRecord>>;

    /// Change a key's state. `Destroyed` also deletes its wrapped blobs, in the
    /// same transaction. Leaving `Active` sets the retired timestamp.
    async fn set_state(&self, id: KeyId, state: KeyState) -> Result<()>;

    /// Insert or replace the blob of `id` under `wrapped.master_key`.
    async fn put_wrapped(&self, id: KeyId, wrapped: &WrappedKey) -> Result<()>;

    /// Delete the blob of `id` under `master_key`.
    async fn delete_wrapped(&self, id: KeyId, master_key: &MasterKeyId) -> Result<()>;
}
