//! What a value is bound to: its table, column, row primary key and tenant.
//!
//! The [`Context`] of a value is never stored. It is rebuilt from the row on
//! every read and fed to AES-GCM as associated data (see [`crate::format`](mod@crate::format)), so a
//! value copied into another row, column, table or tenant fails authentication.
//! Primary keys are canonicalised with a type tag per part, so `42` (integer) and
//! `"42"` (text) differ, and composite keys are supported. All integer widths
//! canonicalise to `i64`, so widening a column from `INT` to `BIGINT` does not
//! invalidate stored values.

use std::fmt;

/// One part of a primary key, in canonical form.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PkPart {
    /// Any integer column (`SMALLINT`, `INT`, `BIGINT`), widened to `i64`.
    Int(i64),
    /// A UUID, as its 16 bytes.
    Uuid([u8; 16]),
    /// A text key, as UTF-8.
    Text(String),
    /// A binary key.
    Bytes(Vec<u8>),
}

impl PkPart {
    /// The type tag written before the part in the associated data.
    pub const fn tag(&self) -> u8 {
        match self {
            PkPart::Int(_) => 0x01,
            PkPart::Uuid(_) => 0x02,
            PkPart::Text(_) => 0x03,
            PkPart::Bytes(_) => 0x04,
        }
    }

    pub(crate) fn write_canonical(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
        match self {
            PkPart::Int(v) => crate::format::put_lp(out, &v.to_be_bytes()),
            PkPart::Uuid(v) => crate::format::put_lp(out, v),
            PkPart::Text(v) => crate::format::put_lp(out, v.as_bytes()),
            PkPart::Bytes(v) => crate::format::put_lp(out, v),
        }
    }

    fn encoded_len(&self) -> usize {
        5 + match self {
            PkPart::Int(_) => 8,
            PkPart::Uuid(_) => 16,
            PkPart::Text(v) => v.len(),
            PkPart::Bytes(v) => v.len(),
        }
    }
}

// Primary keys are usually not secret, but they may be (an e-mail as a key), so
// they are not printed in full.
impl fmt::Debug for PkPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkPart::Int(v) => write!(f, "Int({v})"),
            PkPart::Uuid(v) => write!(f, "Uuid({})", crate::format::hex(v)),
            PkPart::Text(v) => write!(f, "Text(<{} bytes>)", v.len()),
            PkPart::Bytes(v) => write!(f, "Bytes(<{} bytes>)", v.len()),
        }
    }
}

macro_rules! int_part {
    ($($t:ty),*) => {$(
        impl From<$t> for PkPart {
            fn from(v: $t) -> Self { PkPart::Int(i64::from(v)) }
        }
        impl From<$t> for RowId {
            fn from(v: $t) -> Self { RowId::single(PkPart::from(v)) }
        }
    )*};
}
int_part!(i8, i16, i32, i64, u8, u16, u32);

impl From<&str> for PkPart {
    fn from(v: &str) -> Self {
        PkPart::Text(v.to_owned())
    }
}
impl From<String> for PkPart {
    fn from(v: String) -> Self {
        PkPart::Text(v)
    }
}
impl From<&String> for PkPart {
    fn from(v: &String) -> Self {
        PkPart::Text(v.clone())
    }
}
impl From<Vec<u8>> for PkPart {
    fn from(v: Vec<u8>) -> Self {
        PkPart::Bytes(v)
    }
}
impl From<&[u8]> for PkPart {
    fn from(v: &[u8]) -> Self {
        PkPart::Bytes(v.to_vec())
    }
}
#[cfg(feature = "uuid")]
impl From<uuid::Uuid> for PkPart {
    fn from(v: uuid::Uuid) -> Self {
        PkPart::Uuid(*v.as_bytes())
    }
}

/// The primary key of a row: one or more [`PkPart`]s, in key order.
///
/// A single-column key is held inline (no allocation): a page of rows builds
/// one row id per row, and most tables have one key column.
#[derive(Clone)]
pub struct RowId(Parts);

/// The parts of a [`RowId`]: exactly one inline, or any other number in a
/// vector (never a vector of one, so each key has one representation).
#[derive(Clone)]
enum Parts {
    One(PkPart),
    Many(Vec<PkPart>),
}

impl PartialEq for RowId {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for RowId {}

impl std::hash::Hash for RowId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl std::fmt::Debug for RowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RowId").field(&self.parts()).finish()
    }
}

impl RowId {
    /// A single-column primary key.
    pub fn single(part: impl Into<PkPart>) -> Self {
        RowId(Parts::One(part.into()))
    }

    /// A composite primary key; the parts in the key's column order.
    ///
    /// # Panics
    /// Never; an empty list yields a row id that [`crate::Envelope`] refuses with
    /// [`crate::Error::MissingRowId`].
    pub fn composite(parts: impl IntoIterator<Item = PkPart>) -> Self {
        // One part (the usual key, and what a derived model's id is built
        // with) allocates nothing.
        let mut parts = parts.into_iter().fuse();
        match (parts.next(), parts.next()) {
            (Some(one), None) => RowId(Parts::One(one)),
            (first, second) => RowId(Parts::Many(
                first.into_iter().chain(second).chain(parts).collect(),
            )),
        }
    }

    /// The parts.
    pub fn parts(&self) -> &[PkPart] {
        match &self.0 {
            Parts::One(p) => std::slice::from_ref(p),
            Parts::Many(v) => v,
        }
    }

    /// `true` when the row id has no parts (the row's key is not known).
    pub fn is_empty(&self) -> bool {
        self.parts().is_empty()
    }

    pub(crate) fn encoded_len(&self) -> usize {
        2 + self.parts().iter().map(PkPart::encoded_len).sum::<usize>()
    }

    /// The canonical form of the key (the bytes bound into each value's
    /// associated data), in lower-case hex: what job checkpoints store as a
    /// cursor, typed and independent of the database.
    pub(crate) fn to_canonical_hex(&self) -> String {
        let mut out = Vec::with_capacity(self.encoded_len());
        let n = u16::try_from(self.parts().len()).expect("more than 65535 primary key parts");
        out.extend_from_slice(&n.to_be_bytes());
        for p in self.parts() {
            p.write_canonical(&mut out);
        }
        crate::format::hex(&out)
    }

    /// The inverse of [`RowId::to_canonical_hex`]; `None` on anything else.
    pub(crate) fn from_canonical_hex(hex: &str) -> Option<RowId> {
        let bytes = crate::format::unhex(hex)?;
        let (n, mut rest) = bytes.split_first_chunk::<2>()?;
        let mut parts = Vec::with_capacity(usize::from(u16::from_be_bytes(*n)));
        for _ in 0..u16::from_be_bytes(*n) {
            let (tag, r) = rest.split_first()?;
            let (len, r) = r.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            if r.len() < len {
                return None;
            }
            let (v, r) = r.split_at(len);
            rest = r;
            parts.push(match tag {
                0x01 => PkPart::Int(i64::from_be_bytes(v.try_into().ok()?)),
                0x02 => PkPart::Uuid(v.try_into().ok()?),
                0x03 => PkPart::Text(String::from_utf8(v.to_vec()).ok()?),
                0x04 => PkPart::Bytes(v.to_vec()),
                _ => return None,
            });
        }
        rest.is_empty().then(|| RowId::composite(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_is_one_row_id_however_it_was_built() {
        use std::hash::{BuildHasher, RandomState};
        let single = RowId::from(7);
        let composite = RowId::composite([PkPart::Int(7)]);
        assert_eq!(single, composite);
        let h = RandomState::new();
        assert_eq!(h.hash_one(&single), h.hash_one(&composite));
        assert_eq!(format!("{single:?}"), "RowId([Int(7)])");
        assert_eq!(composite.parts(), &[PkPart::Int(7)]);
        let two = RowId::composite([PkPart::Int(7), PkPart::Text("a".into())]);
        assert_ne!(single, two);
        assert_eq!(two.parts().len(), 2);
        assert!(RowId::composite([]).is_empty());
        assert_eq!(
            RowId::from_canonical_hex(&single.to_canonical_hex()),
            Some(composite)
        );
    }

    #[test]
    fn canonical_hex_round_trips_every_part_kind() {
        let row = RowId::composite([
            PkPart::Int(-7),
            PkPart::Uuid([0xab; 16]),
            PkPart::Text("é/x".into()),
            PkPart::Bytes(vec![0, 1, 2]),
        ]);
        let hex = row.to_canonical_hex();
        assert_eq!(RowId::from_canonical_hex(&hex), Some(row));
        assert_eq!(RowId::from_canonical_hex(&hex[..hex.len() - 2]), None);
        assert_eq!(RowId::from_canonical_hex("zz"), None);
        assert_ne!(
            RowId::from(42).to_canonical_hex(),
            RowId::from("42").to_canonical_hex()
        );
    }
}

impl From<&str> for RowId {
    fn from(v: &str) -> Self {
        RowId::single(v)
    }
}
impl From<String> for RowId {
    fn from(v: String) -> Self {
        RowId::single(v)
    }
}
impl From<PkPart> for RowId {
    fn from(v: PkPart) -> Self {
        RowId::single(v)
    }
}
#[cfg(feature = "uuid")]
impl From<uuid::Uuid> for RowId {
    fn from(v: uuid::Uuid) -> Self {
        RowId::single(v)
    }
}

/// The full encryption context of one value. Cheap to build and copy: it borrows
/// everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Context<'a> {
    /// The table the value is stored in.
    pub table: &'a str,
    /// The column the value is stored in.
    pub column: &'a str,
    /// The primary key of the row the value is stored in.
    pub row: &'a RowId,
    /// The tenant the row belongs to, if rows are tenant-bound.
    pub tenant: Option<&'a str>,
}

impl<'a> Context<'a> {
    /// A context without a tenant.
    pub fn new(table: &'a str, column: &'a str, row: &'a RowId) -> Self {
        Context {
            table,
            column,
            row,
            tenant: None,
        }
    }

    /// The same context bound to a tenant.
    pub fn with_tenant(self, tenant: &'a str) -> Self {
        Context {
            tenant: Some(tenant),
            ..self
        }
    }
}
