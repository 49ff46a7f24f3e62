//! Stored values and opened plaintext, and their place in sqlx.
//!
//! [`Sealed`] is what an encrypted column holds: the bytes of [`crate::format`](mod@crate::format).
//! It implements sqlx `Type`, `Encode` and `Decode` for each enabled driver
//! (PostgreSQL `BYTEA`, MySQL/MariaDB `VARBINARY`/`BLOB`, SQLite `BLOB`), and
//! decoding validates the header, so a column holding something that is not a
//! sealed value fails at decode time with a clear error instead of later.
//!
//! [`Plaintext`] is what opening returns: bytes that zeroize on drop and never
//! print.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::Result;
use crate::format;
use crate::key::KeyId;

/// An encrypted value as stored in the database. See the [module documentation](self).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sealed(Vec<u8>);

impl Sealed {
    /// Validate stored bytes (version, length, key id) and wrap them. This does
    /// not authenticate them; opening does.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        format::parse_header(&bytes)?;
        Ok(Sealed(bytes))
    }

    pub(crate) fn from_trusted(bytes: Vec<u8>) -> Self {
        Sealed(bytes)
    }

    /// Move the stored bytes out, leaving an empty value behind. The empty
    /// value is not a sealed value (it has no header): the model batch opener
    /// leaves one in each field it takes (through the generated
    /// `SealedRow::__take_sealed`) of a row it builds next and never reads
    /// again; should one be read anyway, it has key id 0, which no key has.
    pub(crate) fn take(&mut self) -> Self {
        Sealed(std::mem::take(&mut self.0))
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The stored bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The data key this value was sealed under (id 0, which no key has, for
    /// the empty value a batch opener leaves in a row it is opening).
    pub fn key_id(&self) -> KeyId {
        format::parse_header(&self.0).map_or(KeyId::new(0), |h| h.key_id)
    }

    /// Stored length in bytes (plaintext length plus [`format::OVERHEAD`]).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `false` for every value read or sealed (at least [`format::OVERHEAD`]
    /// bytes); `true` only for the empty value a batch opener leaves in a row
    /// it is opening.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id())
            .field("len", &self.0.len())
            .finish()
    }
}

impl TryFrom<Vec<u8>> for Sealed {
    type Error = crate::Error;
    fn try_from(v: Vec<u8>) -> Result<Self> {
        Sealed::from_bytes(v)
    }
}

impl AsRef<[u8]> for Sealed {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Decrypted bytes: zeroized on drop, never printed, compared in constant
/// time (for values of equal length: the length itself is not secret, a
/// sealed value shows it).
#[derive(Clone)]
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl PartialEq for Plaintext {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl Eq for Plaintext {}

impl Plaintext {
    pub(crate) fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Plaintext(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Take the bytes out of the zeroizing wrapper. The caller is then
    /// responsible for them.
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }

    /// The bytes, still zeroizing.
    pub(crate) fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl std::ops::Deref for Plaintext {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext(<{} bytes redacted>)", self.0.len())
    }
}

macro_rules! sqlx_impls {
    ($feature:literal, $db:ty) => {
        #[cfg(feature = $feature)]
        impl sqlx::Type<$db> for Sealed {
            fn type_info() -> <$db as sqlx::Database>::TypeInfo {
                <Vec<u8> as sqlx::Type<$db>>::type_info()
            }
            fn compatible(ty: &<$db as sqlx::Database>::TypeInfo) -> bool {
                <Vec<u8> as sqlx::Type<$db>>::compatible(ty)
            }
        }

        #[cfg(feature = $feature)]
        impl sqlx::Encode<'_, $db> for Sealed {
            fn encode(
                self,
                buf: &mut <$db as sqlx::Database>::ArgumentBuffer,
            ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                // By value: drivers that keep the bytes (SQLite) take the
                // buffer over instead of copying it.
                <Vec<u8> as sqlx::Encode<'_, $db>>::encode(self.0, buf)
            }
            fn encode_by_ref(
                &self,
                buf: &mut <$db as sqlx::Database>::ArgumentBuffer,
            ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <Vec<u8> as sqlx::Encode<'_, $db>>::encode_by_ref(&self.0, buf)
            }
            fn size_hint(&self) -> usize {
                self.0.len()
            }
        }

        #[cfg(feature = $feature)]
        impl<'r> sqlx::Decode<'r, $db> for Sealed {
            fn decode(
                value: <$db as sqlx::Database>::ValueRef<'r>,
            ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
                let bytes = <Vec<u8> as sqlx::Decode<'r, $db>>::decode(value)?;
                Ok(Sealed::from_bytes(bytes)?)
            }
        }
    };
}

sqlx_impls!("postgres", sqlx::Postgres);
sqlx_impls!("mysql", sqlx::MySql);
sqlx_impls!("sqlite", sqlx::Sqlite);

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(b: &[u8]) -> Plaintext {
        Plaintext::new(Zeroizing::new(b.to_vec()))
    }

    #[test]
    fn plaintexts_compare_by_content_and_length() {
        assert_eq!(plain(b"secret"), plain(b"secret"));
        assert_ne!(plain(b"secret"), plain(b"secreT"));
        assert_ne!(plain(b"secret"), plain(b"secret!"));
        assert_ne!(plain(b""), plain(b"\0"));
        assert_eq!(plain(b""), plain(b""));
        assert_eq!(
            format!("{:?}", plain(b"secret")),
            "Plaintext(<6 bytes redacted>)"
        );
    }
}
