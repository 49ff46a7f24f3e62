//! What `#[derive(Encrypted)]` tells the rest of the library about a model.
//!
//! The application annotates a model once; the jobs that migrate its columns to
//! encryption, re-encrypt it after a key rotation and verify it before a key is
//! destroyed must then bind every value exactly as the model does (same table,
//! column, primary key parts in the same canonical form, same tenant string, same
//! plaintext encoding), or what a job writes would not open through the model.
//! So the derive describes the model ([`super::Encrypted::DESCRIPTION`]) and the
//! jobs take the description instead of asking the user to repeat it.
//!
//! The description is also written to the key store's column registry the first
//! time a process seals a model ([`crate::Envelope::register_model`]), so the
//! operator's tools know every encrypted column of the model without running a
//! job first.

use serde::Serialize;
use zeroize::Zeroizing;

use super::framing::{Framing, PlainBuf};
use super::plain::{CodecId, PlainValue};
use crate::context::{PkPart, RowId};
use crate::error::{Error, Result};

/// How a primary-key part is canonicalised in each value's associated data
/// (see [`crate::PkPart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PkKind {
    /// Any integer, canonicalised to `i64`.
    Int,
    /// A UUID (16 bytes).
    Uuid,
    /// Text (UTF-8).
    Text,
    /// Bytes.
    Bytes,
}

impl PkKind {
    /// The name used on the command line (`--pk id:uuid`).
    pub const fn name(self) -> &'static str {
        match self {
            PkKind::Int => "int",
            PkKind::Uuid => "uuid",
            PkKind::Text => "text",
            PkKind::Bytes => "bytes",
        }
    }
}

/// How a tenant value becomes the tenant string bound into values (see
/// [`super::TenantField`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TenantKind {
    /// Text, as is.
    Text,
    /// An integer, in decimal.
    Int,
    /// A UUID, hyphenated lower case.
    Uuid,
}

impl TenantKind {
    /// The name used on the command line (`--tenant-column clinic:text`).
    pub const fn name(self) -> &'static str {
        match self {
            TenantKind::Text => "text",
            TenantKind::Int => "int",
            TenantKind::Uuid => "uuid",
        }
    }
}

/// One primary-key column of a model, in key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KeyColumn {
    /// The column (and field) name.
    pub name: &'static str,
    /// How its value is canonicalised.
    pub kind: PkKind,
}

/// The tenant column of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TenantColumn {
    /// The column (and field) name.
    pub name: &'static str,
    /// How its value becomes the tenant string.
    pub kind: TenantKind,
}

/// Turns a plaintext value into the field's plaintext bytes with the model's
/// own codec (before padding and the `hide_null` marker).
pub type EncodePlain = fn(&PlainValue, &mut Zeroizing<Vec<u8>>) -> Result<()>;
/// Turns the field's plaintext bytes (after padding and marker are removed)
/// back into a plaintext value with the model's own codec.
pub type DecodePlain = fn(&[u8]) -> Result<PlainValue>;

/// One encrypted column of a model.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EncryptedColumn {
    /// The Rust field name.
    pub field: &'static str,
    /// The column: its SQL name and the name bound into each value.
    pub column: &'static str,
    /// The field's plaintext encoding.
    pub codec: CodecId,
    /// Whether the column may be SQL NULL (an `Option` field without
    /// `hide_null`).
    pub nullable: bool,
    /// `hide_null`: `None` is stored as an encrypted marker.
    pub hide_null: bool,
    /// `pad = N` (0: no padding).
    pub pad: usize,
    /// The length of every encoding of the field's type, for fixed-width
    /// types (a hidden `None` is filled to it).
    pub fixed_len: Option<usize>,
    /// The model's own codec, plaintext value → bytes.
    #[serde(skip)]
    pub encode_plain: EncodePlain,
    /// The model's own codec, bytes → plaintext value.
    #[serde(skip)]
    pub decode_plain: DecodePlain,
}

/// A model as the derive describes it. See the [module documentation](self).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ModelDescription {
    /// The Rust type name.
    pub name: &'static str,
    /// The table: its SQL name and the name bound into each value.
    pub table: &'static str,
    /// The primary-key columns, in key order.
    pub key: &'static [KeyColumn],
    /// The tenant column, if rows are tenant-bound.
    pub tenant: Option<TenantColumn>,
    /// The encrypted columns, in field order.
    pub encrypted: &'static [EncryptedColumn],
    /// Every column of the sealed row, in field order.
    pub columns: &'static [&'static str],
    /// `#[envelope(id_not_secret)]`: the primary key may appear in error
    /// messages (which row of a batch did not open).
    pub id_not_secret: bool,
    /// The blind indexes ([`crate::model::Encrypted::INDEXES`]).
    #[serde(skip)]
    pub indexes: &'static [crate::index::IndexColumn],
}

impl ModelDescription {
    /// The description as JSON (what the column registry stores): everything
    /// but the codec functions.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a model description serialises")
    }

    /// The encrypted column named `column`.
    pub fn encrypted_column(&self, column: &str) -> Option<&EncryptedColumn> {
        self.encrypted.iter().find(|c| c.column == column)
    }

    /// The primary key of a row as it appears in an error message
    /// (`id = 42`, `region = "eu", number = 7`), or `None` unless the model is
    /// marked `#[envelope(id_not_secret)]`.
    pub fn key_in_errors(&self, row: &RowId) -> Option<String> {
        if !self.id_not_secret {
            return None;
        }
        let parts = self.key.iter().zip(row.parts()).map(|(k, part)| {
            let value = match part {
                PkPart::Int(v) => v.to_string(),
                PkPart::Uuid(b) => crate::format::uuid_hyphenated(b),
                PkPart::Text(t) => format!("{t:?}"),
                PkPart::Bytes(b) => format!("0x{}", crate::format::hex(b)),
            };
            format!("{} = {value}", k.name)
        });
        Some(parts.collect::<Vec<_>>().join(", "))
    }
}

impl EncryptedColumn {
    /// The frame of this column's values (marker, filler, padding).
    pub const fn framing(&self) -> Framing {
        Framing {
            hide_null: self.hide_null,
            fixed_len: self.fixed_len,
            pad: self.pad,
        }
    }

    /// The whole plaintext of a stored value, framed exactly as the model
    /// frames it: `None` for SQL NULL (a NULL in a nullable column), the
    /// hidden-NULL frame for NULL under `hide_null`. A job that encrypts a
    /// plaintext column calls this, then seals the bytes.
    pub fn encode_stored(&self, value: &PlainValue) -> Result<Option<PlainBuf>> {
        let framing = self.framing();
        match value {
            PlainValue::Null if self.hide_null => Ok(Some(framing.hidden_null())),
            PlainValue::Null if self.nullable => Ok(None),
            PlainValue::Null => Err(Error::codec(
                "PlainValue",
                format!(
                    "NULL cannot be stored in column {}: the field is not an Option",
                    self.column
                ),
            )),
            v => {
                let mut buf = framing.value(v.size_hint());
                (self.encode_plain)(v, buf.zeroizing_mut())?;
                framing.finish(&mut buf);
                Ok(Some(buf))
            }
        }
    }

    /// The plaintext value of a decrypted stored value (the inverse of
    /// [`EncryptedColumn::encode_stored`]; a hidden NULL is
    /// [`PlainValue::Null`]).
    pub fn decode_stored(&self, plain: Zeroizing<Vec<u8>>) -> Result<PlainValue> {
        match self.framing().unframe(plain)? {
            None => Ok(PlainValue::Null),
            Some(bytes) => (self.decode_plain)(&bytes),
        }
    }
}
