//! The error type.
//!
//! Every failure of the library is one variant of [`Error`]. The variants are
//! chosen so that a caller can act on them (retry, alert, fix configuration)
//! without ever seeing secret material: no variant carries plaintext, key bytes or
//! ciphertext. Authentication failures are deliberately opaque: whether a value
//! was tampered with or copied from another row is not something an attacker
//! should learn from an error message.

use std::fmt;
use std::sync::Arc;

use crate::key::{KeyId, KeyState};

/// A boxed error from a lower layer (driver, SDK, I/O).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while sealing, opening or managing keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stored bytes are not a value of a known format (see [`crate::format`](mod@crate::format)).
    #[error("malformed encrypted value: {0}")]
    Malformed(MalformedReason),

    /// Authentication of the value failed: it was tampered with, or it belongs to
    /// another row, column, table or tenant. Intentionally carries no detail.
    #[error(
        "authentication failed: the value was altered or does not belong to this row, column, table or tenant"
    )]
    Authentication,

    /// The value (or an operation) references a key the key store does not know.
    #[error("unknown key {0}: the key store has no such key (`keys list` shows them)")]
    UnknownKey(KeyId),

    /// The key (data, branch or index) exists but its state forbids the operation.
    #[error("key {id} is {state} and cannot be used to {operation}{hint}", hint = not_usable_hint(*.id, .state))]
    KeyNotUsable {
        /// The key.
        id: KeyId,
        /// Its current state.
        state: KeyState,
        /// What was attempted.
        operation: KeyOperation,
    },

    /// A key-state change lost a race: the key was not in the state the change
    /// expected (another process or an operator changed it first). Nothing was
    /// changed; read the key again and decide.
    #[error(
        "key {id} is {current}, not {expected}: another process or an operator changed it first; it was not moved to {wanted} (read its state again and decide)"
    )]
    StateConflict {
        /// The key.
        id: KeyId,
        /// The state the change expected.
        expected: KeyState,
        /// The state the key is in.
        current: KeyState,
        /// The state the change wanted.
        wanted: KeyState,
    },

    /// A value was to be sealed for a row whose primary key is not known yet.
    #[error(
        "missing row id for {table}.{column}: the primary key must be set before a value is encrypted"
    )]
    MissingRowId {
        /// Table of the value.
        table: String,
        /// Column of the value.
        column: String,
    },

    /// The keyring (KMS or local) could not be reached or timed out. Retryable.
    #[error("keyring unavailable ({master_key}): {message}")]
    KeyringUnavailable {
        /// Master key that was being used.
        master_key: String,
        /// What happened (never contains key material).
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The keyring answered, and refused.
    #[error("keyring refused ({master_key}): {kind}")]
    Keyring {
        /// Why it refused.
        kind: KeyringErrorKind,
        /// Master key that was being used.
        master_key: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The master keyring of a tenant that brings its own key failed (disabled,
    /// access revoked, unreachable). Only that tenant is affected.
    #[error("the master keyring of tenant {tenant:?} failed: {source}")]
    TenantKeyring {
        /// The tenant.
        tenant: String,
        /// What its keyring answered.
        #[source]
        source: Box<Error>,
    },

    /// The key store (the data-key table) failed. When the store's own
    /// tables do not exist, the message says to run its migrations.
    #[error("key store error: {0}{hint}", hint = store_hint(.0))]
    Store(#[source] sqlx::Error),

    /// A field value could not be encoded to or decoded from plaintext bytes.
    #[error("codec error for {type_name}: {message}")]
    Codec {
        /// The Rust type being encoded or decoded.
        type_name: &'static str,
        /// What was wrong (never the plaintext itself).
        message: String,
    },

    /// The library was configured inconsistently.
    #[error("configuration error: {0}")]
    Config(String),

    /// A query on a model's own table failed (insert, update, fetch, or a
    /// `query_as` opened through the envelope). `sqlx::Error::RowNotFound`
    /// when the row to update or the one row to fetch does not exist.
    #[error("query on the table of model {model} failed: {source}")]
    Query {
        /// The model (its Rust name).
        model: &'static str,
        /// What the database or driver said.
        #[source]
        source: sqlx::Error,
    },

    /// One row of a batch did not open: which row (its position in the
    /// batch, from 0), which column, and why. The primary key is named only
    /// for models marked `#[envelope(id_not_secret)]`. The cause is shared
    /// by every row that failed for the same reason (one unreachable data
    /// key fails all of its rows).
    #[error("row {position} of the batch, column {column}{}: {source}", key.as_ref().map(|k| format!(" ({k})")).unwrap_or_default())]
    Row {
        /// The row's position in the batch (or stream), from 0.
        position: usize,
        /// The column whose value did not open.
        column: &'static str,
        /// The row's primary key, if the model allows it in errors.
        key: Option<String>,
        /// Why it did not open.
        #[source]
        source: Arc<Error>,
    },
}

impl Error {
    /// `true` when retrying the same operation later may succeed (keyring outage,
    /// throttling, transient store errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::KeyringUnavailable { .. } => true,
            Error::TenantKeyring { source, .. } => source.is_retryable(),
            Error::Keyring { kind, .. } => matches!(kind, KeyringErrorKind::Throttled),
            Error::Store(e) | Error::Query { source: e, .. } => matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            Error::Row { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// The keyring holds none of the master keys that wrapped a data key
    /// (named after the keyring's primary master key).
    pub(crate) fn no_usable_wrapped_key(master_key: impl Into<String>) -> Self {
        Error::Keyring {
            kind: KeyringErrorKind::NoUsableWrappedKey,
            master_key: master_key.into(),
            source: None,
        }
    }

    /// A [`Error::Codec`] error.
    pub fn codec(type_name: &'static str, message: impl Into<String>) -> Self {
        Error::Codec {
            type_name,
            message: message.into(),
        }
    }
}

/// What a refusal by key state leaves the user to do, when anything: a
/// `retired` key was suspended by an operator and can be reactivated; a
/// `destroyed` one is gone.
fn not_usable_hint(id: KeyId, state: &KeyState) -> String {
    match state {
        KeyState::Retired => format!(
            " (an operator suspended it: `sqlx-envelope keys reactivate {}` lets it open again)",
            id.get()
        ),
        KeyState::Destroyed => " (destroyed: what it sealed can no longer be opened)".into(),
        _ => String::new(),
    }
}

/// What to do about a key-store error, when there is something to say: one
/// of the store's own tables (`sqlx_envelope_*`) missing means its
/// migrations have not run on this database (PostgreSQL `42P01`, MySQL and
/// MariaDB `42S02`, SQLite "no such table").
pub(crate) fn store_hint(e: &sqlx::Error) -> &'static str {
    let sqlx::Error::Database(db) = e else {
        return "";
    };
    let missing = matches!(db.code().as_deref(), Some("42P01" | "42S02"))
        || db.message().starts_with("no such table");
    if missing && db.message().contains("sqlx_envelope_") {
        " (the key store's tables do not exist in this database: run the `migrate` command first \
         (`sqlx-envelope migrate`, or your own tool's), or the store's `migrate()`)"
    } else {
        ""
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(e)
    }
}

/// Why a stored value was rejected before any decryption was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedReason {
    /// Zero bytes.
    Empty,
    /// Shorter than the fixed overhead of its format.
    TooShort {
        /// Length found.
        len: usize,
        /// Minimum length of the format.
        min: usize,
    },
    /// The first byte names no known format version.
    UnknownVersion(u8),
    /// The key id field is zero, which no key store assigns.
    InvalidKeyId,
}

impl fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MalformedReason::Empty => f.write_str("empty value"),
            MalformedReason::TooShort { len, min } => {
                write!(f, "{len} bytes is shorter than the minimum of {min}")
            }
            MalformedReason::UnknownVersion(v) => write!(f, "unknown format version 0x{v:02x}"),
            MalformedReason::InvalidKeyId => f.write_str("key id 0 is not valid"),
        }
    }
}

/// What a refused key was going to be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyOperation {
    /// Sealing a new value.
    Encrypt,
    /// Opening a stored value.
    Decrypt,
    /// Re-wrapping the key under another master key.
    Rewrap,
    /// Computing a blind index (an index key, to write or to look up).
    Index,
    /// Moving the key to another state.
    ChangeState(KeyState),
}

impl fmt::Display for KeyOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyOperation::Encrypt => "encrypt",
            KeyOperation::Decrypt => "decrypt",
            KeyOperation::Rewrap => "re-wrap",
            KeyOperation::Index => "compute a blind index",
            KeyOperation::ChangeState(KeyState::Active) => "become active",
            KeyOperation::ChangeState(KeyState::DecryptOnly) => "become decrypt_only",
            KeyOperation::ChangeState(KeyState::Retired) => "become retired",
            KeyOperation::ChangeState(KeyState::Destroyed) => "become destroyed",
            KeyOperation::ChangeState(_) => "become pending",
        })
    }
}

/// Why a keyring refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyringErrorKind {
    /// The caller may not use the master key (KMS AccessDenied / IncorrectKey).
    AccessDenied,
    /// The wrapped key does not authenticate under this master key and context.
    InvalidCiphertext,
    /// The master key is disabled or pending deletion.
    KeyDisabled,
    /// The master key does not exist.
    KeyNotFound,
    /// The service throttled the request and retries were exhausted.
    Throttled,
    /// None of the stored wrapped keys belongs to a master key this keyring holds.
    NoUsableWrappedKey,
    /// Anything else the service answered.
    Other,
}

impl fmt::Display for KeyringErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyringErrorKind::AccessDenied => "access denied",
            KeyringErrorKind::InvalidCiphertext => {
                "wrapped key does not authenticate under this master key and context"
            }
            KeyringErrorKind::KeyDisabled => "master key disabled or pending deletion",
            KeyringErrorKind::KeyNotFound => "master key not found",
            KeyringErrorKind::Throttled => "throttled",
            KeyringErrorKind::NoUsableWrappedKey => {
                "no stored wrapped key belongs to a master key of this keyring (configure the master key that wrapped it: `sqlx-envelope keys list` shows each key's)"
            }
            KeyringErrorKind::Other => "request failed",
        })
    }
}
