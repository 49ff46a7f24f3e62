//! A blind index a model declares with `#[encrypt(index(...))]` (one field) or
//! `#[envelope(index(..., fields = "a, b"))]` (compound): its column, the
//! encrypted fields it hashes, and how their text is prepared.

use std::borrow::Cow;

use super::{BlindIndexValue, IndexSpec, Normalization, Part, Transform, plan};
use crate::envelope::Envelope;
use crate::error::{Error, Result};

/// One blind index of a model, as the derive describes it
/// ([`crate::model::Encrypted::INDEXES`]). The index column is also the
/// index's name, which (with the table, tenant and version) selects its key.
#[derive(Debug, Clone, Copy)]
pub struct IndexColumn {
    /// The index column (binary: `BYTEA`, `VARBINARY(32)`, `BLOB`), and the
    /// index's name.
    pub column: &'static str,
    /// The encrypted columns whose plaintexts it hashes, in order (one for a
    /// field's index, several for a compound index).
    pub fields: &'static [&'static str],
    /// How the text is normalised before it is hashed.
    pub normalization: Normalization,
    /// What part of the normalised text is indexed.
    pub transform: Transform,
    /// Bits kept; `0`: planned from `expected_rows` ([`plan`]).
    pub bits: u16,
    /// The rows the index is planned for when `bits` is `0`.
    pub expected_rows: u64,
    /// Key version (a new version is a new key and a new column).
    pub version: u32,
}

impl IndexColumn {
    /// The bits the index keeps: `bits`, or the recommendation of [`plan`]
    /// for `expected_rows`.
    pub fn bits(&self) -> Result<u16> {
        match self.bits {
            0 => Ok(plan(self.expected_rows, 0)?.recommended),
            b => Ok(b),
        }
    }

    /// Whether the index keeps all 256 bits (no false positives; can back a
    /// `UNIQUE` constraint).
    pub fn is_full(&self) -> bool {
        self.bits == super::FULL_BITS
    }

    /// The index's spec on `table`.
    pub fn spec(&self, table: &'static str) -> Result<IndexSpec> {
        let spec = IndexSpec {
            table,
            name: self.column,
            bits: self.bits()?,
            version: self.version,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// `text` normalised, then transformed: what is hashed, and what two
    /// values are compared by when a lookup drops false positives.
    pub fn prepare<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.normalization.apply(text) {
            Cow::Borrowed(b) => self.transform.apply(b),
            Cow::Owned(o) if self.transform == Transform::Identity => Cow::Owned(o),
            Cow::Owned(o) => Cow::Owned(self.transform.apply(&o).into_owned()),
        }
    }

    /// The index value of `parts` (the text of each field, in order) in
    /// `table` for `tenant`. A one-field index of a NULL field is `None` (SQL
    /// NULL); in a compound index a NULL part hashes as NULL, distinct from
    /// every text.
    pub async fn value(
        &self,
        envelope: &Envelope,
        table: &'static str,
        tenant: Option<&str>,
        parts: &[Option<&str>],
    ) -> Result<Option<BlindIndexValue>> {
        if parts.len() != self.fields.len() {
            return Err(Error::Config(format!(
                "blind index {} covers {} field(s) ({}), {} value(s) given",
                self.column,
                self.fields.len(),
                self.fields.join(", "),
                parts.len()
            )));
        }
        if parts.len() == 1 && parts[0].is_none() {
            return Ok(None);
        }
        let keyed = self.keyed(envelope, table, tenant).await?;
        Ok(self.value_with(&keyed, parts))
    }

    /// This index keyed for `tenant` in `table` (one key lookup and one HMAC
    /// key setup), for computing the values of many rows with
    /// [`IndexColumn::value_with`].
    pub async fn keyed(
        &self,
        envelope: &Envelope,
        table: &'static str,
        tenant: Option<&str>,
    ) -> Result<super::Keyed> {
        let spec = self.spec(table)?;
        let key = envelope
            .index_key(spec.table, spec.name, tenant, spec.version)
            .await?;
        Ok(super::Keyed::new(
            key.expose(),
            &spec,
            tenant,
            self.fields.len(),
        ))
    }

    /// [`IndexColumn::value`] with a keyed HMAC from [`IndexColumn::keyed`]
    /// (same table and tenant).
    pub fn value_with(
        &self,
        keyed: &super::Keyed,
        parts: &[Option<&str>],
    ) -> Option<BlindIndexValue> {
        if parts.len() == 1 && parts[0].is_none() {
            return None;
        }
        let prepared: Vec<Option<Cow<'_, str>>> =
            parts.iter().map(|p| p.map(|t| self.prepare(t))).collect();
        let hashed: Vec<Part<'_>> = prepared
            .iter()
            .map(|p| match p {
                Some(t) => Part::Text(t),
                None => Part::Null,
            })
            .collect();
        Some(keyed.value(&hashed))
    }

    /// Whether a row's `parts` equal looked-up values already prepared with
    /// [`IndexColumn::prepare`] (what drops a truncated index's false
    /// positives).
    pub fn matches(&self, parts: &[Option<Cow<'_, str>>], prepared: &[Cow<'_, str>]) -> bool {
        parts.len() == prepared.len()
            && parts
                .iter()
                .zip(prepared)
                .all(|(p, v)| p.as_deref().is_some_and(|p| self.prepare(p) == *v))
    }
}

/// The index of model `M` stored in column `column`, with its position in
/// [`crate::model::Encrypted::INDEXES`].
pub fn of_model<M: crate::model::Encrypted>(column: &str) -> Result<(usize, &'static IndexColumn)> {
    of_description(M::DESCRIPTION, column)
}

/// [`of_model`] from a model's description.
pub fn of_description(
    model: &'static crate::model::ModelDescription,
    column: &str,
) -> Result<(usize, &'static IndexColumn)> {
    model
        .indexes
        .iter()
        .enumerate()
        .find(|(_, i)| i.column == column)
        .ok_or_else(|| {
            Error::Config(format!(
                "model {} has no blind index {column:?} (indexes: {})",
                model.name,
                model
                    .indexes
                    .iter()
                    .map(|i| i.column)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// The value to bind to look rows of model `M` up by its index `column`
/// (`values`: one per indexed field, in order): `WHERE <column> = <this>`.
/// With a truncated index the rows found include false positives: open them
/// and keep those whose fields, prepared with [`IndexColumn::prepare`], equal
/// the prepared values (what the generated `find_by_...` does).
pub async fn lookup_value<M: crate::model::Encrypted>(
    envelope: &Envelope,
    column: &str,
    tenant: Option<&str>,
    values: &[&str],
) -> Result<BlindIndexValue> {
    let (_, index) = of_model::<M>(column)?;
    check_tenant::<M>(tenant)?;
    let parts: Vec<Option<&str>> = values.iter().map(|v| Some(*v)).collect();
    Ok(index
        .value(envelope, M::TABLE, tenant, &parts)
        .await?
        .expect("values were given"))
}

/// A tenant-bound model is looked up within one tenant; a model without
/// tenants with none.
fn check_tenant<M: crate::model::Encrypted>(tenant: Option<&str>) -> Result<()> {
    match (M::TENANT, tenant) {
        (Some(col), None) => Err(Error::Config(format!(
            "model {} is bound to tenants (column {col}): look it up within one tenant",
            M::DESCRIPTION.name
        ))),
        (None, Some(_)) => Err(Error::Config(format!(
            "model {} has no tenant column: look it up without a tenant",
            M::DESCRIPTION.name
        ))),
        _ => Ok(()),
    }
}

/// The text a blind index reads from a field: the text itself for `String`,
/// the usual text form for integers, `bool`, `char`, UUIDs (hyphenated,
/// lowercase) and dates (`YYYY-MM-DD`). A lookup gives values in the same form.
#[diagnostic::on_unimplemented(
    message = "a blind index reads text: `{Self}` has no text form for an index",
    label = "index a `String`, an integer, `bool`, `char`, `Uuid` or `NaiveDate` field"
)]
pub trait IndexText {
    /// The text to index.
    fn index_text(&self) -> Cow<'_, str>;
}

impl IndexText for String {
    fn index_text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl IndexText for str {
    fn index_text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

macro_rules! display_text {
    ($($t:ty),*) => {$(
        impl IndexText for $t {
            fn index_text(&self) -> Cow<'_, str> {
                Cow::Owned(self.to_string())
            }
        }
    )*};
}
display_text!(i8, i16, i32, i64, i128, u8, u16, u32, u64, u128, bool, char);

#[cfg(feature = "uuid")]
impl IndexText for uuid::Uuid {
    fn index_text(&self) -> Cow<'_, str> {
        Cow::Owned(self.hyphenated().to_string())
    }
}

#[cfg(feature = "chrono")]
impl IndexText for chrono::NaiveDate {
    fn index_text(&self) -> Cow<'_, str> {
        Cow::Owned(self.format("%Y-%m-%d").to_string())
    }
}
