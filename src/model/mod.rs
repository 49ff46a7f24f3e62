//! Encrypted models: what `#[derive(Encrypted)]` generates code for.
//!
//! A model is a plain struct whose `#[encrypt]` fields hold plaintext. The derive
//! generates a second struct, the *sealed row* (`PatientSealed` for `Patient`),
//! with the same fields except that each encrypted field holds ciphertext
//! ([`Sealed`], or `Option<Sealed>` for a nullable field). Only the sealed row
//! implements `sqlx::FromRow`, and only [`Sealed`] implements sqlx `Encode` for
//! encrypted columns, so plaintext cannot be written to or read from the database
//! by accident: the only way from one type to the other is through the
//! [`Envelope`].
//!
//! Most code never sees the sealed row. The derive also writes the model's
//! table for every enabled driver ([`Table`]): `patient.insert(&envelope,
//! &pool)`, `update`, `update_fields(&[PatientColumn::Phone])`,
//! `Patient::fetch_by_key`; and any `query_as` on the sealed row opens its
//! results in the same call ([`QueryAsExt::opened`]). Values are sealed and
//! opened in batches: a row (or a batch of rows) makes one
//! [`Envelope::seal_many`] call; a result set resolves each data key once,
//! opens its values together (as [`KeySet::open_batch_in_place`] does) and is
//! opened across cores when it is large ([`open_all`], [`open_each`],
//! [`open_stream`]).
//!
//! ```no_run
//! use sqlx_envelope::{Encrypted, Envelope, QueryAsExt};
//!
//! #[derive(Encrypted, Debug)]
//! #[envelope(table = "patients", id = "id")]
//! struct Patient {
//!     id: i64,
//!     #[encrypt]
//!     name: String,
//! }
//!
//! # async fn demo(envelope: Envelope, pool: sqlx::SqlitePool, patient: Patient) -> sqlx_envelope::Result<()> {
//! patient.insert(&envelope, &pool).await?;
//! let again: Option<Patient> = Patient::fetch_by_key(&envelope, &pool, &patient.id).await?;
//! let all: Vec<Patient> = sqlx::query_as::<_, PatientSealed>("SELECT * FROM patients")
//!     .opened(&envelope)
//!     .fetch_all(&pool)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! See `docs/models.md` for the attributes, the id patterns and the query
//! patterns; [`codec`] for the plaintext encoding of each field type and
//! [`framing`] for `hide_null` and `pad`.

use std::future::Future;

use crate::context::{PkPart, RowId};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::sealed::Sealed;

pub mod batch;
pub mod codec;
pub mod describe;
pub mod framing;
pub mod padding;
pub mod plain;
pub mod query;
pub mod table;

pub use batch::{open_all, open_each, open_stream};
pub use codec::{FieldCodec, Json};
pub use describe::{
    EncryptedColumn, KeyColumn, ModelDescription, PkKind, TenantColumn, TenantKind,
};
pub use framing::{Framing, PlainBuf};
pub use plain::{CodecId, PlainValue};
pub use query::{Opened, QueryAsExt, SealedQuery};
pub use table::{Dialect, Table};

pub use crate::envelope::KeySet;

/// A model with encrypted fields. Implemented by `#[derive(Encrypted)]`; see the
/// [module documentation](self).
pub trait Encrypted: Sized + Send + Sync + 'static {
    /// The sealed row type generated for this model (`<Name>Sealed`).
    type Sealed: SealedRow<Model = Self>;
    /// The primary key: the key field's type, or a tuple of the key fields'
    /// types in key order (`id(region, number)`: `(String, i32)`).
    type Key: Send + Sync;
    /// The columns [`table::update_fields`] can write: the generated
    /// `<Name>Column` enum (every column but the primary key and the tenant).
    type Column: Column;

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
    /// The whole description: what jobs need to migrate, re-encrypt and verify
    /// the model (see [`describe`]).
    const DESCRIPTION: &'static ModelDescription;
    /// `(encrypted column, plaintext column)` of every field marked
    /// `#[encrypt(migrating_from = "...")]`: `fetch_by_key` also reads the
    /// plaintext column, and an update of the encrypted column sets the
    /// plaintext one to NULL.
    const MIGRATING: &'static [(&'static str, &'static str)] = &[];
    /// The blind indexes of the model (`#[encrypt(index(...))]`), in field
    /// order: sealing, `insert`, `update` and `update_fields` fill their
    /// columns; `find_by_<field>` looks rows up by them.
    const INDEXES: &'static [crate::index::IndexColumn] = &[];

    /// The text of each field blind index `index` (of
    /// [`Encrypted::INDEXES`]) hashes, in order; `None` for a NULL field.
    /// Generated.
    #[doc(hidden)]
    fn __index_parts(&self, index: usize) -> Vec<Option<std::borrow::Cow<'_, str>>> {
        let _ = index;
        Vec::new()
    }

    /// The row id the values are bound to, or `None` if a part of the primary
    /// key is not set yet (an `Option` id that is `None`).
    fn row_id(&self) -> Option<RowId>;

    /// The tenant the values are bound to, if any.
    fn tenant(&self) -> Option<String>;

    /// The framed plaintext of encrypted field `field` (an index into
    /// `DESCRIPTION.encrypted`), or `None` for SQL NULL. Generated; used by
    /// the batch sealer.
    #[doc(hidden)]
    fn __encode_field(&self, field: usize) -> Result<Option<PlainBuf>>;

    /// The sealed row of this model, taking one value per encrypted field (in
    /// field order) from `values`. Generated; used by the batch sealer.
    #[doc(hidden)]
    fn __assemble(&self, values: &mut std::vec::IntoIter<Option<Sealed>>) -> Result<Self::Sealed>;

    /// Encrypt every `#[encrypt]` field (one [`Envelope::seal_many`] call).
    /// Fails with [`Error::MissingRowId`] if the primary key is not set.
    fn seal(&self, envelope: &Envelope) -> impl Future<Output = Result<Self::Sealed>> + Send {
        async move {
            batch::seal_all(envelope, std::slice::from_ref(self))
                .await?
                .pop()
                .ok_or_else(|| Error::Config("sealing one model returned no row".into()))
        }
    }

    /// Encrypt many models: every value of the batch in one
    /// [`Envelope::seal_many`] call.
    fn seal_all(
        envelope: &Envelope,
        models: &[Self],
    ) -> impl Future<Output = Result<Vec<Self::Sealed>>> + Send {
        batch::seal_all(envelope, models)
    }

    /// Decrypt a result set; see [`open_all`].
    fn open_all(
        envelope: &Envelope,
        rows: Vec<Self::Sealed>,
    ) -> impl Future<Output = Result<Vec<Self>>> + Send {
        open_all(envelope, rows)
    }

    /// Decrypt a result set row by row; see [`open_each`].
    fn open_each(
        envelope: &Envelope,
        rows: Vec<Self::Sealed>,
    ) -> impl Future<Output = Vec<Result<Self>>> + Send {
        open_each(envelope, rows)
    }
}

/// A column of a model, as the generated `<Name>Column` enum names it: what
/// [`table::update_fields`] writes.
pub trait Column: Copy + Eq + std::fmt::Debug + Send + Sync + 'static {
    /// The column's SQL name.
    fn name(self) -> &'static str;
    /// Its position in [`Encrypted::COLUMNS`].
    fn index(self) -> usize;
}

/// The sealed row of a model: ciphertext for encrypted fields, everything else
/// as is. Implemented by `#[derive(Encrypted)]` on the generated `<Name>Sealed`
/// type, which also implements `sqlx::FromRow`.
pub trait SealedRow: Sized + Send + Sync + 'static {
    /// The plaintext model.
    type Model: Encrypted<Sealed = Self>;

    /// The row id the values are bound to, or `None` if it is not set.
    fn row_id(&self) -> Option<RowId>;

    /// The tenant the values are bound to, if any.
    fn tenant(&self) -> Option<String>;

    /// Call `f` with each stored value of the encrypted fields and its column
    /// (NULLs skipped), in field order.
    fn for_each_sealed<'a>(&'a self, f: &mut dyn FnMut(&'static str, &'a Sealed));

    /// The stored values of the encrypted fields (NULLs omitted).
    fn sealed_values(&self) -> Vec<&Sealed> {
        let mut out = Vec::with_capacity(<Self::Model as Encrypted>::ENCRYPTED_COLUMNS.len());
        self.for_each_sealed(&mut |_, s| out.push(s));
        out
    }

    /// Build the model, each encrypted field's stored value opened by
    /// `opener` (in field order, NULLs skipped), reporting which column
    /// failed. `owner` is the row's id and tenant when the caller has read
    /// them already (the batch opener did, to open the values), `None` to
    /// read them from the row. Generated.
    #[doc(hidden)]
    fn __open_with(
        self,
        opener: &mut dyn __private::FieldOpener,
        owner: Option<(RowId, Option<String>)>,
    ) -> std::result::Result<Self::Model, batch::OpenFailure>;

    /// Move each stored value of the encrypted fields out of the row, with
    /// its column (NULLs skipped), in field order: the batch opener opens
    /// them all together, then hands them back through
    /// [`SealedRow::__open_with`]. Generated.
    #[doc(hidden)]
    fn __take_sealed(&mut self, f: &mut dyn FnMut(&'static str, Sealed));

    /// Set the value of blind index `index` (of [`Encrypted::INDEXES`]).
    /// Generated; the batch sealer calls it.
    #[doc(hidden)]
    fn __set_index(&mut self, index: usize, value: Option<crate::index::BlindIndexValue>) {
        let _ = (index, value);
    }

    /// Decrypt with data keys already resolved (see [`open_all`]). A value whose
    /// key is not in `keys` fails with [`Error::UnknownKey`]. Each value is
    /// decrypted in the buffer it was read into (no copy of the ciphertext),
    /// and `String`/`Vec<u8>` fields take that buffer over.
    fn open_with(self, keys: &KeySet) -> Result<Self::Model> {
        self.__open_with(&mut &*keys, None).map_err(|f| f.error)
    }

    /// Decrypt this row.
    fn open(self, envelope: &Envelope) -> impl Future<Output = Result<Self::Model>> + Send {
        async move {
            let keys = envelope
                .keys_for(self.sealed_values().into_iter().map(Sealed::as_bytes))
                .await?;
            self.open_with(&keys)
        }
    }
}

/// A field type that can be (part of) a primary key: its canonical [`PkPart`].
///
/// Integers up to 32 bits unsigned and 64 bits signed, `String`, `Vec<u8>` and
/// `uuid::Uuid`; `Option<T>` of these is "not set yet" when `None`.
pub trait PkField {
    /// How the part is canonicalised.
    const KIND: PkKind;

    /// The key part, or `None` when the key is not set.
    fn pk_part(&self) -> Option<PkPart>;
}

macro_rules! pk_field {
    ($kind:ident: $($t:ty),*) => {$(
        impl PkField for $t {
            const KIND: PkKind = PkKind::$kind;
            fn pk_part(&self) -> Option<PkPart> {
                Some(PkPart::from(self.clone()))
            }
        }
    )*};
}
pk_field!(Int: i8, i16, i32, i64, u8, u16, u32);
pk_field!(Text: String);
pk_field!(Bytes: Vec<u8>);
#[cfg(feature = "uuid")]
pk_field!(Uuid: uuid::Uuid);

impl<T: PkField> PkField for Option<T> {
    const KIND: PkKind = T::KIND;
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
    /// How the value becomes the tenant string.
    const KIND: TenantKind;

    /// The tenant, or `None` for a row without one.
    fn tenant(&self) -> Option<String>;
}

impl TenantField for String {
    const KIND: TenantKind = TenantKind::Text;
    fn tenant(&self) -> Option<String> {
        Some(self.clone())
    }
}

macro_rules! tenant_int {
    ($($t:ty),*) => {$(
        impl TenantField for $t {
            const KIND: TenantKind = TenantKind::Int;
            fn tenant(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
tenant_int!(i16, i32, i64, u16, u32, u64);

#[cfg(feature = "uuid")]
impl TenantField for uuid::Uuid {
    const KIND: TenantKind = TenantKind::Uuid;
    fn tenant(&self) -> Option<String> {
        Some(self.hyphenated().to_string())
    }
}

impl<T: TenantField> TenantField for Option<T> {
    const KIND: TenantKind = T::KIND;
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

    pub use super::batch::OpenFailure;
    pub use super::describe::{EncryptedColumn, KeyColumn, ModelDescription, TenantColumn};
    use super::{CodecId, FieldCodec, KeySet, PlainValue};
    pub use super::{Framing, PkField, PlainBuf, TenantField};
    use crate::context::Context;
    use crate::error::{Error, Result};
    pub use crate::model::codec::{json_decode, json_encode, json_len};
    use crate::sealed::Sealed;

    /// Opens the stored values of one row for the generated
    /// `SealedRow::__open_with`: a [`KeySet`] opens each value when asked;
    /// the batch opener hands back values it opened together beforehand.
    pub trait FieldOpener {
        /// The plaintext of `value`, the value of `ctx`. The batch opener
        /// took the value out of the row beforehand (`value` is the empty
        /// value it left) and hands back what it opened, once it checked
        /// that `ctx` names the column it took it from.
        fn open(&mut self, ctx: &Context<'_>, value: Sealed) -> Result<Zeroizing<Vec<u8>>>;
    }

    impl FieldOpener for &KeySet {
        fn open(&mut self, ctx: &Context<'_>, value: Sealed) -> Result<Zeroizing<Vec<u8>>> {
            self.open_in_place(ctx, value.into_bytes())
        }
    }

    /// Open one stored value in its own buffer and remove its frame: the
    /// encoded field value, or `None` for a hidden NULL.
    pub fn open_field(
        opener: &mut dyn FieldOpener,
        ctx: &Context<'_>,
        value: Sealed,
        framing: Framing,
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        framing.unframe(opener.open(ctx, value)?)
    }

    /// Move a stored value out of a row for the batch opener (see
    /// `SealedRow::__take_sealed`).
    pub fn take_sealed(value: &mut Sealed) -> Sealed {
        value.take()
    }

    /// The error for a migrating field whose encrypted and plaintext columns
    /// are both NULL while the field cannot be `None`.
    pub fn migrating_null(column: &'static str, plain: &'static str) -> Error {
        Error::codec(
            "Option",
            format!(
                "column {column} and its plaintext column {plain} are both NULL, but the field is not an Option"
            ),
        )
    }

    /// The error for a stored value whose frame says NULL in a column whose
    /// field cannot be `None`.
    pub fn unexpected_null(column: &'static str) -> Error {
        Error::codec(
            "Option",
            format!("column {column} holds a hidden NULL but its field is not an Option"),
        )
    }

    /// The error for a batch sealer that handed a model fewer values than it
    /// has encrypted fields (a bug, reported instead of a panic).
    pub fn missing_value(column: &'static str) -> Error {
        Error::Config(format!(
            "internal error: no sealed value for column {column}"
        ))
    }

    /// The model's own codec for a description: plaintext value → bytes.
    pub fn encode_plain_with<T: FieldCodec>(
        value: &PlainValue,
        out: &mut Zeroizing<Vec<u8>>,
    ) -> Result<()> {
        let v = T::from_plain(value)?;
        out.reserve_exact(v.size_hint());
        v.encode(out)
    }

    /// The model's own codec for a description: bytes → plaintext value.
    pub fn decode_plain_with<T: FieldCodec>(bytes: &[u8]) -> Result<PlainValue> {
        T::decode(bytes)?.to_plain()
    }

    /// `#[encrypt(json)]` fields: plaintext value → compact JSON of `T`.
    pub fn encode_plain_json<T: serde::Serialize + serde::de::DeserializeOwned>(
        value: &PlainValue,
        out: &mut Zeroizing<Vec<u8>>,
    ) -> Result<()> {
        let mut tmp = Zeroizing::new(Vec::with_capacity(value.size_hint()));
        crate::model::plain::encode_plain(CodecId::Json, value, &mut tmp)?;
        let v: T = json_decode(&tmp)?;
        out.reserve_exact(json_len(&v));
        json_encode(&v, out)
    }

    /// `#[encrypt(json)]` fields: compact JSON of `T` → plaintext value.
    pub fn decode_plain_json<T: serde::Serialize + serde::de::DeserializeOwned>(
        bytes: &[u8],
    ) -> Result<PlainValue> {
        let v: T = json_decode(bytes)?;
        let mut tmp = Zeroizing::new(Vec::with_capacity(json_len(&v)));
        json_encode(&v, &mut tmp)?;
        crate::model::plain::decode_plain(CodecId::Json, &tmp)
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
}
