//! # sqlx-envelope
//!
//! Transparent envelope encryption of database columns through sqlx.
//!
//! Values are encrypted with AES-256-GCM under *data keys*; data keys are
//! wrapped by a *master key* in AWS KMS (feature `aws-kms`) or held locally
//! ([`LocalKeyring`]) and stored wrapped in a key table of the application's own
//! database ([`store`]). Every value is bound to its table, column, row primary
//! key and tenant ([`Context`]), so a value copied anywhere else fails to decrypt.
//! Data keys are cached within limits of age, uses and bytes ([`CacheLimits`]).
//!
//! ```no_run
//! # async fn demo() -> sqlx_envelope::Result<()> {
//! use sqlx_envelope::{Context, Envelope, LocalKeyring, RowId, store::{KeyStore, SqliteKeyStore}};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite://app.db").await?;
//! let store = SqliteKeyStore::new(pool);
//! store.migrate().await?;
//! let envelope = Envelope::builder()
//!     .keyring(LocalKeyring::from_env("SQLX_ENVELOPE_LOCAL_KEYS")?)
//!     .store(store)
//!     .build()?;
//!
//! let row = RowId::from(42_i64);
//! let ctx = Context::new("users", "email", &row);
//! let sealed = envelope.seal(&ctx, b"ada@example.com").await?;
//! let opened = envelope.open(&ctx, &sealed).await?;
//! assert_eq!(&*opened, b"ada@example.com");
//! # Ok(()) }
//! ```
//!
//! The byte format is documented in [`format`](mod@crate::format); the threat model in the README.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod cache;
#[cfg(feature = "cli")]
pub mod cli;
pub mod clock;
pub mod context;
pub mod envelope;
pub mod error;
pub mod format;
mod gcm;
pub mod hierarchy;
pub mod index;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub mod jobs;
pub mod key;
pub mod keyring;
pub mod model;
pub mod sealed;
pub mod store;

pub use cache::{CacheLimits, CacheStats};
pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{Context, PkPart, RowId};
pub use envelope::{Envelope, EnvelopeBuilder, KeySet, ScopePolicy, ShredReport};
pub use error::{Error, KeyOperation, KeyringErrorKind, MalformedReason, Result};
pub use key::{
    DataKey, KeyContext, KeyId, KeyKind, KeyMaterial, KeyState, MasterKeyId, WrappedKey,
};
pub use keyring::{Keyring, LocalKeyring, MultiKeyring, TenantKeyrings};
#[cfg(feature = "aws-kms")]
pub use keyring::{KmsConfig, KmsKeyring};
pub use model::{Encrypted, FieldCodec, Json, QueryAsExt, SealedRow};
pub use sealed::{Plaintext, Sealed};

#[cfg(feature = "derive")]
pub use sqlx_envelope_macros::Encrypted;
