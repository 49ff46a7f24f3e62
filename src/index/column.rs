//! A blind index a model declares with `#[encrypt(index(...))]`: its column,
//! the encrypted field it indexes, and how that field's text is prepared.

use std::borrow::Cow;

use super::{BlindIndexValue, IndexSpec, Normalization, Part, Transform, compute, plan};
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
    /// The encrypted column whose plaintext it indexes.
    pub field: &'static str,
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
            Cow::Owned(o) => Cow::Owned(self.transform.apply(&o).into_owned()),
        }
    }

    /// The index value of `text` (`None`, SQL NULL, for a NULL field) in
    /// `table` for `tenant`.
    pub async fn value(
        &self,
        envelope: &Envelope,
        table: &'static str,
        tenant: Option<&str>,
        text: Option<&str>,
    ) -> Result<Option<BlindIndexValue>> {
        let Some(text) = text else {
            return Ok(None);
        };
        let spec = self.spec(table)?;
        let prepared = self.prepare(text);
        compute(envelope, &spec, tenant, &[Part::Text(&prepared)])
            .await
            .map(Some)
    }
}

/// The index of model `M` stored in column `column`.
pub fn of_model<M: crate::model::Encrypted>(column: &str) -> Result<(usize, &'static IndexColumn)> {
    M::INDEXES
        .iter()
        .enumerate()
        .find(|(_, i)| i.column == column)
        .ok_or_else(|| {
            Error::Config(format!(
                "model {} has no blind index {column:?} (indexes: {})",
                M::DESCRIPTION.name,
                M::INDEXES
                    .iter()
                    .map(|i| i.column)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// The value to bind to look rows of model `M` up by its index `column`:
/// `WHERE <column> = <this>`. With a truncated index the rows found include
/// false positives: open them and keep those whose field, prepared with
/// [`IndexColumn::prepare`], equals the prepared `value` (what the generated
/// `find_by_<field>` does).
pub async fn lookup_value<M: crate::model::Encrypted>(
    envelope: &Envelope,
    column: &str,
    tenant: Option<&str>,
    value: &str,
) -> Result<BlindIndexValue> {
    let (_, index) = of_model::<M>(column)?;
    check_tenant::<M>(tenant)?;
    Ok(index
        .value(envelope, M::TABLE, tenant, Some(value))
        .await?
        .expect("a value was given"))
}

/// A tenant-bound model is looked up within one tenant; a model without
/// tenants with none.
pub(crate) fn check_tenant<M: crate::model::Encrypted>(tenant: Option<&str>) -> Result<()> {
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

/// The text a blind index reads from a field: implemented for `String` and
/// `str`. Index a field of another type through its text form in a `String`
/// field of its own, or wait for typed indexes.
#[diagnostic::on_unimplemented(
    message = "a blind index reads text: `{Self}` is not a text field",
    label = "index a `String` or `Option<String>` field"
)]
pub trait IndexText {
    /// The text to index.
    fn index_text(&self) -> &str;
}

impl IndexText for String {
    fn index_text(&self) -> &str {
        self
    }
}

impl IndexText for str {
    fn index_text(&self) -> &str {
        self
    }
}
