//! The error type.
//!
//! Every failure of the library is one variant of [`Error`]. The variants are
//! chosen so that a caller can act on them (retry, alert, fix configuration)
//! without ever seeing secret material: no variant carries plaintext, key bytes or
//! ciphertext. Authentication failures are deliberately opaque: whether a value
//! was tampered with or copied from another row is not something an attacker
//! should learn from an error message.

use std::fmt;

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

    /// The value references a data key the key store does not know.
    #[error("unknown data key {0}")]
    UnknownKey(KeyId),

    /// The data key exists but its state forbids the operation.
    #[error("data key {id} is {state} and cannot be used to {operation}")]
    KeyNotUsable {
        /// The data key.
        id: KeyId,
        /// Its current state.
        state: KeyState,
        /// What was attempted.
        operation: KeyOperation,
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

    /// The key store (the data-key table) failed.
    #[error("key store error: {0}")]
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
}

impl Error {
    /// `true` when retrying the same operation later may succeed (keyring outage,
    /// throttling, transient store errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::KeyringUnavailable { .. } => true,
            Error::Keyring { kind, .. } => matches!(kind, KeyringErrorKind::Throttled),
            Error::Store(e) => matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
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

/// What a refused data key was going to be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyOperation {
    /// Sealing a new value.
    Encrypt,
    /// Opening a stored value.
    Decrypt,
    /// Re-wrapping the data key under another master key.
    Rewrap,
}

impl fmt::Display for KeyOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyOperation::Encrypt => "encrypt",
            KeyOperation::Decrypt => "decrypt",
            KeyOperation::Rewrap => "re-wrap",
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
                "no stored wrapped key belongs to a master key of this keyring"
            }
            KeyringErrorKind::Other => "request failed",
        })
    }
}
