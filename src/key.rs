//! Data keys and the names around them.
//!
//! A *data key* (DEK) is a random 256-bit AES-GCM key that encrypts values. It is
//! stored only *wrapped* (encrypted) by one or more *master keys* in the key
//! store, and lives in plaintext only in process memory: as a [`KeyMaterial`]
//! for the moment it takes to expand it, then as the expanded cipher inside a
//! [`DataKey`]. Both zeroize on drop and print as `[redacted]`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The id of a data key, assigned by the key store (the database) and written
/// into every value sealed under it (see [`crate::format`](mod@crate::format)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u64);

impl KeyId {
    /// Wrap a raw id. Id 0 is never assigned and is rejected when parsing values.
    pub const fn new(id: u64) -> Self {
        KeyId(id)
    }

    /// The raw id.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The id as the signed 64-bit integer databases store.
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }

    pub(crate) fn from_db(id: i64) -> Result<Self> {
        u64::try_from(id)
            .ok()
            .filter(|v| *v != 0)
            .map(KeyId)
            .ok_or_else(|| Error::Config(format!("key store returned invalid key id {id}")))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The life cycle of a key, owned by the key store.
///
/// `pending → active → decrypt_only → retired → destroyed`. `Active` keys encrypt
/// and decrypt. `DecryptOnly` keys were rotated out: values under them still
/// open, no new value is sealed under them. `Retired` keys are refused for
/// decryption too (an operator's emergency stop) but their wrapped material is
/// kept, so retiring is reversible (`retired → decrypt_only`, by an operator
/// only). `Destroyed` keys have no wrapped material left: values under them are
/// gone for good (crypto-shredding); the state is absorbing.
///
/// Every change is a compare-and-set on the current state in the store
/// ([`crate::store::KeyStore::transition`]); [`KeyState::may_become`] is the
/// transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// Reserved by the key store, wrapped material not yet stored. Never used.
    Pending,
    /// Encrypts and decrypts.
    Active,
    /// Decrypts only.
    DecryptOnly,
    /// Refused for all use; reversible.
    Retired,
    /// Wrapped material deleted; irreversible.
    Destroyed,
}

impl KeyState {
    /// The name stored in the key table.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt_only",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// Whether values under a key in this state may be opened.
    pub const fn can_decrypt(self) -> bool {
        matches!(self, KeyState::Active | KeyState::DecryptOnly)
    }

    /// Whether new values may be sealed under a key in this state.
    pub const fn can_encrypt(self) -> bool {
        matches!(self, KeyState::Active)
    }

    /// Whether the store lets a key move from `self` to `to` through
    /// [`crate::store::KeyStore::transition`]: `active → decrypt_only`,
    /// `active | decrypt_only → retired`, `retired → decrypt_only`, and any
    /// other state to `destroyed` (a `pending` reservation too: its activation,
    /// a compare-and-set from `pending`, then fails, so a key being minted while
    /// its tenant is shredded never becomes usable). `pending → active` happens
    /// only through activation, `destroyed` is absorbing, and nothing returns
    /// to `active` or `pending`.
    pub const fn may_become(self, to: KeyState) -> bool {
        use KeyState::*;
        matches!(
            (self, to),
            (Active, DecryptOnly)
                | (Active, Retired)
                | (DecryptOnly, Retired)
                | (Retired, DecryptOnly)
                | (Pending | Active | DecryptOnly | Retired, Destroyed)
        )
    }
}

/// What a key in the key store is for. See the README's "Key hierarchy".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyKind {
    /// A data key: encrypts values. Wrapped by a branch key (or, for keys of
    /// releases before branch keys, directly by master keys).
    Data,
    /// A branch key: wraps the data keys of one tenant (or of one scope when
    /// values have no tenant). Wrapped by master keys.
    Branch,
    /// A blind-index key: keys the blind indexes of one index and tenant.
    /// Wrapped by master keys.
    Index,
}

impl KeyKind {
    /// The name stored in the key table.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::Data => "data",
            KeyKind::Branch => "branch",
            KeyKind::Index => "index",
        }
    }

    /// The `purpose` bound into every wrapping of a key of this kind (the KMS
    /// encryption context, the local keyring's associated data).
    pub const fn purpose(self) -> &'static str {
        match self {
            KeyKind::Data => "sqlx-envelope/data-key",
            KeyKind::Branch => "sqlx-envelope/branch-key",
            KeyKind::Index => "sqlx-envelope/index-key",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "data" => KeyKind::Data,
            "branch" => KeyKind::Branch,
            "index" => KeyKind::Index,
            other => return Err(Error::Config(format!("unknown key kind {other:?}"))),
        })
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => KeyState::Pending,
            "active" => KeyState::Active,
            "decrypt_only" => KeyState::DecryptOnly,
            "retired" => KeyState::Retired,
            "destroyed" => KeyState::Destroyed,
            other => return Err(Error::Config(format!("unknown key state {other:?}"))),
        })
    }
}

/// Plaintext key bytes: 32 bytes, zeroized on drop, never printed.
#[derive(Clone)]
pub struct KeyMaterial(Zeroizing<[u8; 32]>);

impl KeyMaterial {
    /// Length of an AES-256 key.
    pub const LEN: usize = 32;

    /// Take ownership of raw key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        KeyMaterial(Zeroizing::new(bytes))
    }

    /// Copy key bytes from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Config(format!("a data key has 32 bytes, got {}", bytes.len())))?;
        Ok(Self::new(arr))
    }

    /// Fresh random key bytes from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        // The OS generator failing is not recoverable in any meaningful way.
        rand::rngs::SysRng
            .try_fill_bytes(bytes.as_mut())
            .expect("operating system random number generator failed");
        KeyMaterial(bytes)
    }

    /// The raw bytes. Handle with care: copy them only into zeroizing buffers.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

use rand::TryRng as _;

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial([redacted])")
    }
}

/// An unwrapped data key, ready to seal and open values: the id and the expanded
/// AES-256-GCM cipher (round keys zeroized on drop). Shared behind `Arc`, so the
/// key is wiped only when the last user is done with it.
///
/// It also keeps, for the first few columns it seals or opens, the start of
/// their values' associated data already hashed under it
/// ([`crate::format`]'s column prefixes): each set once, on a column's first
/// value, and read without a lock after that; wiped with the key (a prefix's
/// POLYVAL accumulators are wiped when it is dropped, the key's POLYVAL state
/// by the `polyval` crate's `zeroize` feature).
pub struct DataKey {
    id: KeyId,
    gcm: crate::gcm::Gcm,
    columns: [OnceLock<Box<crate::format::ColumnPrefix>>; crate::format::COLUMN_PREFIXES],
}

impl DataKey {
    /// Expand key material for the key `id`.
    pub fn new(id: KeyId, material: &KeyMaterial) -> Self {
        DataKey {
            id,
            gcm: crate::gcm::Gcm::new(material.expose()),
            columns: Default::default(),
        }
    }

    /// The key's column prefixes: filled in order, each set once.
    pub(crate) fn column_prefixes(&self) -> &[OnceLock<Box<crate::format::ColumnPrefix>>] {
        &self.columns
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn gcm(&self) -> &crate::gcm::Gcm {
        &self.gcm
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Identifies one master key: `local:<name>/<version>` for local keys, the key
/// ARN (or id/alias as configured) for KMS keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MasterKeyId(String);

impl MasterKeyId {
    /// Wrap a master key name.
    pub fn new(id: impl Into<String>) -> Self {
        MasterKeyId(id.into())
    }

    /// The name as stored in the key store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MasterKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A data key wrapped (encrypted) by one master key. Safe to store and log the
/// master key id; the blob is opaque ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The master key that wrapped it.
    pub master_key: MasterKeyId,
    /// The wrapped key bytes (KMS CiphertextBlob, or the local keyring's format).
    pub blob: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("master_key", &self.master_key)
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

/// What a key wrapped by a master key is bound to: the key-store row it belongs
/// to. Passed to KMS as the encryption context and to the local keyring as
/// associated data, so a wrapped blob copied to another key-store row does not
/// unwrap.
///
/// It is coarse by design: it never contains a row's primary key, so one key
/// (and one KMS call) serves many rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyContext {
    /// What the key is for; its [`KeyKind::purpose`] is bound into the wrapping.
    pub kind: KeyKind,
    /// The scope the key serves (for data keys by default the table name).
    pub scope: String,
    /// The tenant the key serves, if values are tenant-bound.
    pub tenant: Option<String>,
    /// The key's id in the key store.
    pub key_id: KeyId,
}

impl KeyContext {
    /// The `purpose` of data keys (kept as a constant: data keys of earlier
    /// releases are bound to it).
    pub const PURPOSE: &'static str = KeyKind::Data.purpose();

    /// The context of a data key.
    pub fn data(scope: impl Into<String>, tenant: Option<&str>, key_id: KeyId) -> Self {
        Self::of(KeyKind::Data, scope, tenant, key_id)
    }

    /// The context of a key of any kind.
    pub fn of(
        kind: KeyKind,
        scope: impl Into<String>,
        tenant: Option<&str>,
        key_id: KeyId,
    ) -> Self {
        KeyContext {
            kind,
            scope: scope.into(),
            tenant: tenant.map(str::to_owned),
            key_id,
        }
    }

    /// The context as the ordered string pairs sent to KMS (`purpose`, `scope`,
    /// `key_id`, and `tenant` when set).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("purpose", self.kind.purpose().to_owned()),
            ("scope", self.scope.clone()),
            ("key_id", self.key_id.get().to_string()),
        ];
        if let Some(t) = &self.tenant {
            pairs.push(("tenant", t.clone()));
        }
        pairs
    }

    /// Canonical length-prefixed bytes of the context, used as AAD by the local
    /// keyring.
    pub fn canonical_bytes(&self, master_key: &MasterKeyId) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        crate::format::put_lp(&mut out, self.kind.purpose().as_bytes());
        crate::format::put_lp(&mut out, master_key.as_str().as_bytes());
        crate::format::put_lp(&mut out, self.scope.as_bytes());
        out.extend_from_slice(&self.key_id.get().to_be_bytes());
        match &self.tenant {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                crate::format::put_lp(&mut out, t.as_bytes());
            }
        }
        out
    }
}
