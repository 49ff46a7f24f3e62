//! Encrypted models: what `#[derive(Encrypted)]` generates code for.
//!
//! A model is a plain struct whose `#[encrypt]` fields hold plaintext. The derive
//! generates a second struct, the *sealed row* (`PatientSealed` for `Patient`),
//! with the same fields except that each encrypted field holds ciphertext
//! ([`Sealed`], or `Option<Sealed>` for a nullable field). Only the sealed row
//! implements `sqlx::FromRow`, and only [`Sealed`] implements sqlx `Encode` for
//! encrypted columns, so plaintext cannot be written to or read from the database
//! by accident: the only way from one type to the other is through the
//! [`Envelope`] ([`Encrypted::seal`], [`SealedRow::open`], [`open_all`]).
//!
//! ```no_run
//! use sqlx_envelope::{Encrypted, Envelope};
//!
//! #[derive(Encrypted)]
//! #[envelope(table = "patients", id = "id")]
//! struct Patient {
//!     id: i64,
//!     #[encrypt]
//!     name: String,
//! }
//!
//! # async fn demo(envelope: Envelope, patient: Patient) -> sqlx_envelope::Result<()> {
//! let sealed: PatientSealed = patient.seal(&envelope).await?;
//! let patient: Patient = sealed.open(&envelope).await?;
//! # Ok(()) }
//! ```
//!
//! See the README's "Encrypted models" section (also `docs/models.md`) for the attributes, the id patterns and the query
//! patterns; [`codec`] for the plaintext encoding of each field type.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::context::{PkPart, RowId};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::key::{DataKey, KeyId};
use crate::sealed::Sealed;

pub mod codec;
pub mod padding;

pub use codec::{FieldCodec, Json};

/// Data keys resolved for a batch, by id (what [`Envelope::resolve_keys`]
/// returns).
pub type KeyMap = HashMap<KeyId, Arc<DataKey>>;

/// A model with encrypted fields. Implemented by `#[derive(Encrypted)]`; see the
/// [module documentation](self).
pub trait Encrypted: Sized + Send + Sync {
    /// The sealed row type generated for this model (`<Name>Sealed`).
    type Sealed: SealedRow<Model = Self>;

    /// The table the model is stored in.
    const TABLE: &'static str;
    /// The primary-key columns, in key order (the order of the row id parts).
    const PRIMARY_KEY: &'static [&'static str];
    /// The tenant column, if rows are tenant-bound.
    const TENANT: Option<&'static str>;
    /// Every column of the sealed row, in field order.
    const COLUMNS: &'static [&'static str];
    /// The encrypted columns, in field order.
    const ENCRYPTED_COLUMNS: &'static [&'static str];

    /// The row id the values are bound to, or `None` if a part of the primary
    /// key is not set yet (an `Option` id that is `None`).
    fn row_id(&self) -> Option<RowId>;

    /// The tenant the values are bound to, if any.
    fn tenant(&self) -> Option<String>;

    /// Encrypt every `#[encrypt]` field. Fails with [`Error::MissingRowId`] if the
    /// primary key is not set.
    fn seal(&self, envelope: &Envelope) -> impl Future<Output = Result<Self::Sealed>> + Send;

    /// Encrypt many models (values of one scope share the active data key).
    fn seal_all(
        envelope: &Envelope,
        models: &[Self],
    ) -> impl Future<Output = Result<Vec<Self::Sealed>>> + Send {
        async move {
            let mut out = Vec::with_capacity(models.len());
            for m in models {
                out.push(m.seal(envelope).await?);
            }
            Ok(out)
        }
    }

    /// Decrypt a result set; see [`open_all`].
    fn open_all(
        envelope: &Envelope,
        rows: Vec<Self::Sealed>,
    ) -> impl Future<Output = Result<Vec<Self>>> + Send {
        open_all(envelope, rows)
    }
}

/// The sealed row of a model: ciphertext for encrypted fields, everything else
/// as is. Implemented by `#[derive(Encrypted)]` on the generated `<Name>Sealed`
/// type, which also implements `sqlx::FromRow`.
pub trait SealedRow: Sized + Send + Sync {
    /// The plaintext model.
    type Model: Encrypted<Sealed = Self>;

    /// The row id the values are bound to, or `None` if it is not set.
    fn row_id(&self) -> Option<RowId>;

    /// The tenant the values are bound to, if any.
    fn tenant(&self) -> Option<String>;

    /// The stored values of the encrypted fields (NULLs omitted).
    fn sealed_values(&self) -> Vec<&Sealed>;

    /// Decrypt with data keys already resolved (see [`open_all`]). A value whose
    /// key is not in `keys` fails with [`Error::UnknownKey`].
    fn open_with(self, keys: &KeyMap) -> Result<Self::Model>;

    /// Decrypt this row.
    fn open(self, envelope: &Envelope) -> impl Future<Output = Result<Self::Model>> + Send {
        async move {
            let keys = envelope
                .resolve_keys(self.sealed_values().into_iter().map(Sealed::as_bytes))
                .await?;
            self.open_with(&keys)
        }
    }
}

/// Decrypt a whole result set: each distinct data key is resolved once (all of
/// them concurrently, through the envelope's cache), then every value is
/// decrypted locally. Fails on the first value that does not open.
pub async fn open_all<S: SealedRow>(envelope: &Envelope, rows: Vec<S>) -> Result<Vec<S::Model>> {
    let keys = envelope
        .resolve_keys(
            rows.iter()
                .flat_map(|r| r.sealed_values())
                .map(Sealed::as_bytes),
        )
        .await?;
    rows.into_iter().map(|r| r.open_with(&keys)).collect()
}

/// A field type that can be (part of) a primary key: its canonical [`PkPart`].
///
/// Integers up to 32 bits unsigned and 64 bits signed, `String`, `Vec<u8>` and
/// `uuid::Uuid`; `Option<T>` of these is "not set yet" when `None`.
pub trait PkField {
    /// The key part, or `None` when the key is not set.
    fn pk_part(&self) -> Option<PkPart>;
}

macro_rules! pk_field {
    ($($t:ty),*) => {$(
        impl PkField for $t {
            fn pk_part(&self) -> Option<PkPart> {
                Some(PkPart::from(self.clone()))
            }
        }
    )*};
}
pk_field!(i8, i16, i32, i64, u8, u16, u32, String, Vec<u8>);
#[cfg(feature = "uuid")]
pk_field!(uuid::Uuid);

impl<T: PkField> PkField for Option<T> {
    fn pk_part(&self) -> Option<PkPart> {
        self.as_ref().and_then(PkField::pk_part)
    }
}

/// A field type that can name the tenant a row belongs to. The tenant string is
/// part of the associated data of every encrypted value of the row.
///
/// `String` as is; integers in decimal; `uuid::Uuid` hyphenated lower case;
/// `Option<T>` of these is "no tenant" when `None`.
pub trait TenantField {
    /// The tenant, or `None` for a row without one.
    fn tenant(&self) -> Option<String>;
}

impl TenantField for String {
    fn tenant(&self) -> Option<String> {
        Some(self.clone())
    }
}

macro_rules! tenant_int {
    ($($t:ty),*) => {$(
        impl TenantField for $t {
            fn tenant(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
tenant_int!(i16, i32, i64, u16, u32, u64);

#[cfg(feature = "uuid")]
impl TenantField for uuid::Uuid {
    fn tenant(&self) -> Option<String> {
        Some(self.hyphenated().to_string())
    }
}

impl<T: TenantField> TenantField for Option<T> {
    fn tenant(&self) -> Option<String> {
        self.as_ref().and_then(TenantField::tenant)
    }
}

/// The error for a model whose primary key is not set.
pub fn missing_row_id(table: &str, column: &str) -> Error {
    Error::MissingRowId {
        table: table.to_owned(),
        column: column.to_owned(),
    }
}

/// Support for the generated code. Not a public API: it may change in any
/// release.
#[doc(hidden)]
pub mod __private {
    use std::fmt;

    pub use sqlx;
    pub use zeroize::Zeroizing;

    use super::KeyMap;
    use crate::context::Context;
    use crate::envelope::Envelope;
    use crate::error::{Error, Result};
    pub use crate::model::codec::{json_decode, json_encode};
    use crate::sealed::{Plaintext, Sealed};

    /// Seal encoded plaintext, padded to a multiple of `pad` bytes if `pad > 0`.
    pub async fn seal_bytes(
        envelope: &Envelope,
        ctx: &Context<'_>,
        mut plaintext: Zeroizing<Vec<u8>>,
        pad: usize,
    ) -> Result<Sealed> {
        if pad > 0 {
            super::padding::pad(&mut plaintext, pad);
        }
        envelope.seal(ctx, &plaintext).await
    }

    /// Open a value with resolved keys, removing padding if `pad > 0`.
    pub fn open_bytes(
        keys: &KeyMap,
        ctx: &Context<'_>,
        value: &Sealed,
        pad: usize,
    ) -> Result<Plaintext> {
        let id = value.key_id();
        let key = keys.get(&id).ok_or(Error::UnknownKey(id))?;
        let mut bytes = crate::format::open(key, ctx, value.as_bytes())?;
        if pad > 0 {
            let len = super::padding::unpad(&bytes)?.len();
            bytes.truncate(len);
        }
        Ok(Plaintext::new(bytes))
    }

    /// Split the hidden-NULL marker of a `hide_null` field.
    pub fn split_marker(bytes: &[u8]) -> Result<Option<&[u8]>> {
        match bytes.split_first() {
            Some((0, [])) => Ok(None),
            Some((1, rest)) => Ok(Some(rest)),
            _ => Err(Error::codec("Option", "invalid NULL marker")),
        }
    }

    /// Debug output of a sealed column: its length only.
    pub struct CipherLen<'a, T>(pub &'a T);

    impl fmt::Debug for CipherLen<'_, Sealed> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "<{} bytes>", self.0.len())
        }
    }

    impl fmt::Debug for CipherLen<'_, Option<Sealed>> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Some(s) => write!(f, "<{} bytes>", s.len()),
                None => f.write_str("NULL"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pk_and_tenant_fields() {
        assert_eq!(7_i32.pk_part(), Some(PkPart::Int(7)));
        assert_eq!(Some(7_u32).pk_part(), Some(PkPart::Int(7)));
        assert_eq!(None::<i64>.pk_part(), None);
        assert_eq!(String::from("a").pk_part(), Some(PkPart::Text("a".into())));
        assert_eq!(42_i64.tenant().as_deref(), Some("42"));
        assert_eq!(None::<String>.tenant(), None);
        #[cfg(feature = "uuid")]
        assert_eq!(
            uuid::Uuid::nil().tenant().as_deref(),
            Some("00000000-0000-0000-0000-000000000000")
        );
    }

    #[test]
    fn hidden_null_marker() {
        assert_eq!(__private::split_marker(&[0]).expect("null"), None);
        assert_eq!(
            __private::split_marker(&[1, 9]).expect("some"),
            Some(&[9u8][..])
        );
        assert!(matches!(
            __private::split_marker(&[]),
            Err(Error::Codec { .. })
        ));
        assert!(matches!(
            __private::split_marker(&[0, 1]),
            Err(Error::Codec { .. })
        ));
        assert!(matches!(
            __private::split_marker(&[2]),
            Err(Error::Codec { .. })
        ));
    }
}
