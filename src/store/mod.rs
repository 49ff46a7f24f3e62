//! The key store: the key tables in the application's own database.
//!
//! One row per key (not per value), in `sqlx_envelope_data_keys`: data keys,
//! the branch keys that wrap them, and blind-index keys. A row holds the key's
//! id (assigned by the database and written into every value), its kind, the
//! scope and tenant it serves, its state, and its times by the store's clock.
//! Keys wrapped by master keys (branch keys, index keys, and data keys of
//! releases before branch keys) have one blob per master key in
//! `sqlx_envelope_wrapped_keys`; data keys carry their blob wrapped by their
//! branch key in their own row. Values carry only the 8-byte key id, which keeps
//! them small and lets a cold read of many rows make one keyring call per
//! distinct *branch* key instead of one per row.
//!
//! ## The state machine is the store's
//!
//! Several application processes (each with its own caches) and an operator's
//! tools act on the same rows at once, so every state change is a
//! compare-and-set on the current state, in one statement or one transaction on
//! every database ([`KeyStore::transition`]), following
//! [`KeyState::may_become`]: a process can only demote a key that is still
//! `active`, an operator's `retired` is left only by an operator, and
//! `destroyed` is absorbing: no blob is ever written for a destroyed key again
//! ([`KeyStore::put_wrapped`] checks the state in the same transaction).
//!
//! A key is reserved (`pending`, owned by the reserving process), wrapped with
//! its id bound into the wrapping, then stored and activated in one transaction
//! ([`KeyStore::activate`]), all before any value sealed under it is returned.
//! A value therefore never references a key the store does not hold. Activation
//! records the key's *horizon*: the time (by the store's clock) after which no
//! process seals under it any more, so an operator's destroy knows how long to
//! wait without knowing any application's configuration.
//!
//! Keys every process shares (branch and index keys) have a unique *slot*, so
//! concurrent processes that need the same key agree on one row instead of each
//! minting their own.
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

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::{KeyContext, KeyId, KeyKind, KeyState, MasterKeyId, WrappedKey};

/// Name of the table that tracks this crate's migrations.
pub const MIGRATIONS_TABLE: &str = "_sqlx_envelope_migrations";

/// A key wrapped by its parent key (a data key under its branch key).
#[derive(Clone, PartialEq, Eq)]
pub struct ParentWrap {
    /// The parent (branch) key.
    pub parent: KeyId,
    /// The wrapped key (see [`crate::hierarchy`]).
    pub blob: Vec<u8>,
}

impl fmt::Debug for ParentWrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParentWrap")
            .field("parent", &self.parent)
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

/// One key as the key store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The key id.
    pub id: KeyId,
    /// What the key is for.
    pub kind: KeyKind,
    /// The scope it serves (data keys: by default a table; branch keys: the
    /// scope, or `*` for a tenant's branch key; index keys: `table/index`).
    pub scope: String,
    /// The tenant it serves.
    pub tenant: Option<String>,
    /// Its state.
    pub state: KeyState,
    /// One blob per master key (branch and index keys, and data keys of
    /// releases before branch keys; none once destroyed).
    pub wrapped: Vec<WrappedKey>,
    /// The key wrapped by its branch key (data keys; none once destroyed).
    pub parent: Option<ParentWrap>,
    /// The unique slot of a shared key (branch and index keys).
    pub slot: Option<String>,
    /// The process that reserved the key.
    pub owner: Option<String>,
    /// Creation time, milliseconds since the Unix epoch (store clock).
    pub created_ms: i64,
    /// Time of the last state change.
    pub state_ms: Option<i64>,
    /// When it left the active state.
    pub left_active_ms: Option<i64>,
    /// After this time no process seals under the key (activation time plus the
    /// minting process's max age and outage grace). `None` for keys activated by
    /// releases before horizons were recorded.
    pub horizon_ms: Option<i64>,
}

impl KeyRecord {
    /// The wrapping context of this key (what a master key binds it to).
    pub fn context(&self) -> KeyContext {
        KeyContext {
            kind: self.kind,
            scope: self.scope.clone(),
            tenant: self.tenant.clone(),
            key_id: self.id,
        }
    }
}

/// A key to reserve ([`KeyStore::reserve`]).
#[derive(Debug, Clone, Copy)]
pub struct NewKey<'a> {
    /// What the key is for.
    pub kind: KeyKind,
    /// The scope it serves.
    pub scope: &'a str,
    /// The tenant it serves.
    pub tenant: Option<&'a str>,
    /// For a shared key, its unique slot: a second reservation of the same slot
    /// returns the existing row instead of a new one.
    pub slot: Option<&'a str>,
    /// The reserving process (only it may activate or abandon the key).
    pub owner: &'a str,
}

/// What [`KeyStore::reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// A new pending key, owned by the caller.
    Mine(KeyId),
    /// The slot is held by this key (pending under another owner, or already
    /// active, or later).
    Taken(Box<KeyRecord>),
}

/// What [`KeyStore::activate`] stores with a reserved key.
#[derive(Debug, Clone, Copy)]
pub struct Activation<'a> {
    /// Blobs under master keys (branch, index keys).
    pub wrapped: &'a [WrappedKey],
    /// The key wrapped by its branch key (data keys).
    pub parent: Option<(KeyId, &'a [u8])>,
    /// How long after activation any process may still seal under the key (the
    /// minting process's max age plus outage grace). Recorded as the horizon.
    pub seal_window: Duration,
}

/// Which keys [`KeyStore::list`] returns. Every criterion left unset matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyFilter {
    /// Only these kinds.
    pub kinds: Vec<KeyKind>,
    /// Only these states.
    pub states: Vec<KeyState>,
    /// Only this scope.
    pub scope: Option<String>,
    /// Only this tenant (`Some(None)`: only keys without a tenant).
    pub tenant: Option<Option<String>>,
    /// Only keys that have at least one blob under a master key.
    pub master_wrapped: bool,
}

impl KeyFilter {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }
    /// Only keys of `kind` (repeatable).
    pub fn kind(mut self, kind: KeyKind) -> Self {
        self.kinds.push(kind);
        self
    }
    /// Only keys in `state` (repeatable).
    pub fn state(mut self, state: KeyState) -> Self {
        self.states.push(state);
        self
    }
    /// Only keys of `scope`.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
    /// Only keys of `tenant` (`None`: keys without a tenant).
    pub fn tenant(mut self, tenant: Option<&str>) -> Self {
        self.tenant = Some(tenant.map(str::to_owned));
        self
    }
    /// Only keys with a blob under a master key (what a master-key rotation
    /// re-wraps).
    pub fn master_wrapped(mut self) -> Self {
        self.master_wrapped = true;
        self
    }
}

/// Who recorded an encrypted column in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ColumnSource {
    /// An application sealed a value into the column (the value API knows the
    /// names bound into values, not the SQL names).
    Value,
    /// A `#[derive(Encrypted)]` model (with its description).
    Model,
    /// A job over the column.
    Job,
    /// An operator, by hand.
    Operator,
}

impl ColumnSource {
    /// The name stored in the registry.
    pub const fn as_str(self) -> &'static str {
        match self {
            ColumnSource::Value => "value",
            ColumnSource::Model => "model",
            ColumnSource::Job => "job",
            ColumnSource::Operator => "operator",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "model" => ColumnSource::Model,
            "job" => ColumnSource::Job,
            "operator" => ColumnSource::Operator,
            _ => ColumnSource::Value,
        }
    }
}

/// One encrypted column in the registry (`sqlx_envelope_registry`): values of
/// `scope` were sealed into it. Destroy, status and verify check every
/// registered column of a key's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ColumnRecord {
    /// The data-key scope the values were sealed under.
    pub scope: String,
    /// The table name bound into each value.
    pub context_table: String,
    /// The column name bound into each value.
    pub context_column: String,
    /// The SQL table, when known (models, jobs, operators); otherwise the
    /// context name is assumed.
    pub sql_table: Option<String>,
    /// The SQL column, when known.
    pub sql_column: Option<String>,
    /// Who registered it.
    pub source: ColumnSource,
    /// The model description (JSON), for columns of a model.
    pub model: Option<String>,
    /// When it was first registered (store clock, ms since the Unix epoch).
    pub registered_ms: i64,
}

impl ColumnRecord {
    /// A column a value was sealed into, known by its context names.
    pub fn sealed(scope: &str, table: &str, column: &str) -> Self {
        ColumnRecord {
            scope: scope.to_owned(),
            context_table: table.to_owned(),
            context_column: column.to_owned(),
            sql_table: None,
            sql_column: None,
            source: ColumnSource::Value,
            model: None,
            registered_ms: 0,
        }
    }

    /// The same column with its SQL names and who registered it.
    pub fn with_sql(mut self, table: &str, column: &str, source: ColumnSource) -> Self {
        self.sql_table = Some(table.to_owned());
        self.sql_column = Some(column.to_owned());
        self.source = source;
        self
    }

    /// The same column with a model description.
    pub fn with_model(mut self, model: String) -> Self {
        self.model = Some(model);
        self
    }

    /// The SQL table (the context name when none was recorded).
    pub fn table(&self) -> &str {
        self.sql_table.as_deref().unwrap_or(&self.context_table)
    }

    /// The SQL column (the context name when none was recorded).
    pub fn column(&self) -> &str {
        self.sql_column.as_deref().unwrap_or(&self.context_column)
    }
}

/// Where keys are stored. See the [module documentation](self).
#[async_trait]
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// Create or upgrade the key-store tables.
    async fn migrate(&self) -> Result<()>;

    /// The store's clock: milliseconds since the Unix epoch. By default the
    /// database's clock, so every process and tool agrees on it.
    async fn now_ms(&self) -> Result<i64>;

    /// Reserve a new key in state `pending`, owned by `new.owner`. For a shared
    /// key (`new.slot` set) whose slot is already held, returns the holder.
    async fn reserve(&self, new: &NewKey<'_>) -> Result<Reserved>;

    /// Store the wrapped material of a pending key reserved by `owner` and make
    /// it active, recording its horizon, in one transaction. Fails with
    /// [`crate::Error::StateConflict`] if the key is no longer pending under
    /// `owner` (taken over or destroyed meanwhile; [`crate::Error::UnknownKey`]
    /// once cleaned up), and with [`crate::Error::KeyNotUsable`] (the parent's
    /// id and state) if the branch key it is wrapped under is no longer
    /// active: checked in the same transaction, with the parent's row locked
    /// until the commit (shared on PostgreSQL and MySQL/MariaDB).
    async fn activate(&self, id: KeyId, owner: &str, activation: &Activation<'_>) -> Result<()>;

    /// Delete a pending key reserved by `owner` (after a failed mint). Returns
    /// whether a row was deleted.
    async fn abandon(&self, id: KeyId, owner: &str) -> Result<bool>;

    /// Take over a pending key reserved before `stale_before_ms` (its owner died
    /// while minting). Returns whether `owner` now holds it.
    async fn take_over(&self, id: KeyId, owner: &str, stale_before_ms: i64) -> Result<bool>;

    /// Load one key with its wrapped material.
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>>;

    /// Load several keys in one round trip (missing ids are left out).
    async fn get_many(&self, ids: &[KeyId]) -> Result<Vec<KeyRecord>>;

    /// The keys matching `filter`, by id.
    async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>>;

    /// The key holding `slot`, if any.
    async fn find_slot(&self, slot: &str) -> Result<Option<KeyRecord>>;

    /// Move key `id` from state `from` to `to`, only if it is in `from` now
    /// (compare-and-set). Fails with [`crate::Error::StateConflict`] when the key
    /// is in another state, and with [`crate::Error::Config`] when
    /// [`KeyState::may_become`] forbids the move. Leaving `active` records the
    /// time; `destroyed` deletes every wrapped blob of the key in the same
    /// transaction.
    async fn transition(&self, id: KeyId, from: KeyState, to: KeyState) -> Result<()>;

    /// Insert or replace the blob of `id` under `wrapped.master_key`, only while
    /// the key is active, decrypt-only or retired (checked in the same
    /// transaction, so a concurrent destroy wins or the blob is deleted with
    /// it). Fails with [`crate::Error::KeyNotUsable`] for a pending or destroyed
    /// key.
    async fn put_wrapped(&self, id: KeyId, wrapped: &WrappedKey) -> Result<()>;

    /// Delete the blob of `id` under `master_key`.
    async fn delete_wrapped(&self, id: KeyId, master_key: &MasterKeyId) -> Result<()>;

    /// Record encrypted columns (idempotent). A column registered by a value
    /// seal is completed, never overwritten, by later registrations that know
    /// its SQL names or model.
    async fn register_columns(&self, columns: &[ColumnRecord]) -> Result<()>;

    /// Every registered column.
    async fn columns(&self) -> Result<Vec<ColumnRecord>>;

    /// Delete pending keys reserved more than `older_than` ago that never got
    /// wrapped material (mints that failed or whose process died). Values never
    /// reference pending keys, so this is always safe. Returns how many.
    async fn cleanup_pending(&self, older_than: Duration) -> Result<u64>;
}
