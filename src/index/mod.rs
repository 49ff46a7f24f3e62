//! Blind indexes: find rows by an encrypted value.
//!
//! Values stay randomly encrypted (the same e-mail encrypts differently in
//! every row), so the database cannot compare them. A *blind index* is a keyed
//! hash of the (normalised) plaintext stored in its own binary column next to
//! the encrypted one and indexed by the database: a lookup computes the index
//! of the value it looks for and binds it in an ordinary `WHERE`. The hash is
//! HMAC-SHA256 (the `hmac` and `sha2` crates) under an *index key*: a key of its
//! own in the key tree, one per table, index, tenant and version, wrapped by
//! the master key (or the tenant's own), never used for anything else
//! ([`crate::Envelope::index_key`]). The same value in two tenants or two
//! tables therefore has unrelated index values.
//!
//! **Leakage.** An index reveals which rows share a value (equality and
//! frequency) within one table, index and tenant, to anyone who can read the
//! index column; nothing across tenants or tables. Truncating the index to
//! `bits` bits makes different values collide on purpose, so a stored index
//! value points to about `rows / 2^bits` rows and does not tell which of them
//! share the plaintext ([`plan`] chooses `bits` from the expected row count,
//! following CipherSweet's planner); lookups then open the candidates and drop
//! the false positives by comparing the normalised plaintexts. A
//! full-length index (256 bits) has no false positives and can back a `UNIQUE`
//! constraint, at the cost of revealing exact equality, like deterministic
//! encryption. Never index low-cardinality fields (booleans, a handful of
//! statuses): the frequency of each value is then the value.
//!
//! **Input.** Text is normalised first ([`Normalization`]: Unicode NFKC,
//! trimming, lowercase, or your own function), then optionally transformed
//! ([`Transform`]: last N digits, e-mail domain, digits only), so that
//! `"Ada@Example.com "` and `"ada@example.com"` index the same. A compound
//! index hashes several parts at once, each typed and length-prefixed, in the
//! order of the index definition (`("ab","c")` and `("a","bc")` differ; NULL
//! differs from the empty string).

mod column;
mod normalize;
mod plan;

pub use column::{IndexColumn, IndexText, lookup_value, of_description, of_model};
pub use normalize::{Normalization, Transform};
pub use plan::{BitsPlan, DEFAULT_EXPECTED_ROWS, plan};

use std::fmt;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::format::put_lp;

/// Domain separation string of every blind-index input.
pub const DOMAIN: &[u8] = b"sqlx-envelope/blind-index/v1";

/// The longest index: a full HMAC-SHA256 (no false positives; can back a
/// `UNIQUE` constraint).
pub const FULL_BITS: u16 = 256;

/// One blind index of a table: its name (which, with the table, tenant and
/// version, selects its key), its length in bits, and its key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSpec {
    /// The table.
    pub table: &'static str,
    /// The index name (by convention the index column's name).
    pub name: &'static str,
    /// Bits kept of the HMAC (1 to 256).
    pub bits: u16,
    /// Key version: a new version is a new key, hence a new index (and
    /// column); see the README's "Rotating an index key".
    pub version: u32,
}

impl IndexSpec {
    /// Check the spec (bits within 1..=256, names not empty).
    pub fn validate(&self) -> Result<()> {
        if self.bits == 0 || self.bits > FULL_BITS {
            return Err(Error::Config(format!(
                "blind index {}: bits must be between 1 and 256, got {}",
                self.name, self.bits
            )));
        }
        if self.table.is_empty() || self.name.is_empty() {
            return Err(Error::Config(
                "a blind index needs a table and a name".into(),
            ));
        }
        Ok(())
    }

    /// Bytes of a stored index value.
    pub fn stored_len(&self) -> usize {
        usize::from(self.bits).div_ceil(8)
    }
}

/// One part of a blind index's input, after normalisation: text, bytes (the
/// plaintext encoding of any other field type), or absent (NULL).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    /// NULL: differs from every value, including the empty string.
    Null,
    /// Normalised text.
    Text(&'a str),
    /// The plaintext encoding of a non-text field.
    Bytes(&'a [u8]),
}

impl fmt::Debug for Part<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Null => f.write_str("Null"),
            Part::Text(t) => write!(f, "Text(<{} bytes>)", t.len()),
            Part::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
        }
    }
}

/// A stored blind-index value: the leftmost `bits` bits of the HMAC, in
/// `ceil(bits / 8)` bytes (a binary column: `BYTEA`, `VARBINARY(32)`, `BLOB`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BlindIndexValue(Vec<u8>);

impl BlindIndexValue {
    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Wrap stored bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        BlindIndexValue(bytes)
    }
}

impl fmt::Debug for BlindIndexValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlindIndexValue(<{} bytes>)", self.0.len())
    }
}

/// Compute the index of `parts` for `spec` and `tenant` with the index key
/// (created on first use, then cached: [`Envelope::index_key`]).
pub async fn compute(
    envelope: &Envelope,
    spec: &IndexSpec,
    tenant: Option<&str>,
    parts: &[Part<'_>],
) -> Result<BlindIndexValue> {
    spec.validate()?;
    let key = envelope
        .index_key(spec.table, spec.name, tenant, spec.version)
        .await?;
    Ok(compute_with(key.expose(), spec, tenant, parts))
}

/// Compute an index value with the raw index key (what [`compute`] does once
/// it has the key). Known-answer tests pin this construction.
pub fn compute_with(
    key: &[u8; 32],
    spec: &IndexSpec,
    tenant: Option<&str>,
    parts: &[Part<'_>],
) -> BlindIndexValue {
    Keyed::new(key, spec, tenant, parts.len()).value(parts)
}

/// An index key's HMAC with the input's fixed head (domain, table, index,
/// tenant, bits, number of parts) already absorbed: what a batch computes
/// once per index and tenant, then clones for each row.
#[derive(Clone)]
pub struct Keyed {
    mac: hmac::Hmac<Sha256>,
    bits: u16,
    parts: usize,
}

impl fmt::Debug for Keyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("bits", &self.bits)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl Keyed {
    /// Key the HMAC and absorb the head for inputs of `parts` parts, for
    /// index `spec` and `tenant`.
    pub fn new(key: &[u8; 32], spec: &IndexSpec, tenant: Option<&str>, parts: usize) -> Self {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        let mut head = Vec::with_capacity(64 + spec.table.len() + spec.name.len());
        head.extend_from_slice(DOMAIN);
        put_lp(&mut head, spec.table.as_bytes());
        put_lp(&mut head, spec.name.as_bytes());
        match tenant {
            None => head.push(0),
            Some(t) => {
                head.push(1);
                put_lp(&mut head, t.as_bytes());
            }
        }
        head.extend_from_slice(&spec.bits.to_be_bytes());
        let n = u16::try_from(parts).expect("fewer than 65536 index parts");
        head.extend_from_slice(&n.to_be_bytes());
        mac.update(&head);
        Keyed {
            mac,
            bits: spec.bits,
            parts,
        }
    }

    /// The index value of `parts` (as many as given to [`Keyed::new`]).
    pub fn value(&self, parts: &[Part<'_>]) -> BlindIndexValue {
        assert_eq!(
            parts.len(),
            self.parts,
            "an index input has a fixed number of parts"
        );
        let mut mac = self.mac.clone();
        let mut len = [0u8; 4];
        for p in parts {
            let (tag, bytes): (u8, &[u8]) = match p {
                Part::Null => (0, &[]),
                Part::Text(t) => (1, t.as_bytes()),
                Part::Bytes(b) => (2, b),
            };
            mac.update(&[tag]);
            if tag != 0 {
                len.copy_from_slice(&(bytes.len() as u32).to_be_bytes());
                mac.update(&len);
                mac.update(bytes);
            }
        }
        let full = mac.finalize().into_bytes();
        BlindIndexValue(truncate(&full, self.bits))
    }
}

/// The leftmost `bits` bits of `full`, the unused low bits of the last byte
/// zero.
fn truncate(full: &[u8], bits: u16) -> Vec<u8> {
    let bytes = usize::from(bits).div_ceil(8);
    let mut out = full[..bytes].to_vec();
    let rem = bits % 8;
    if rem != 0 {
        out[bytes - 1] &= 0xffu8 << (8 - rem);
    }
    out
}

macro_rules! sqlx_impls {
    ($feature:literal, $db:ty) => {
        #[cfg(feature = $feature)]
        impl sqlx::Type<$db> for BlindIndexValue {
            fn type_info() -> <$db as sqlx::Database>::TypeInfo {
                <Vec<u8> as sqlx::Type<$db>>::type_info()
            }
            fn compatible(ty: &<$db as sqlx::Database>::TypeInfo) -> bool {
                <Vec<u8> as sqlx::Type<$db>>::compatible(ty)
            }
        }

        #[cfg(feature = $feature)]
        impl sqlx::Encode<'_, $db> for BlindIndexValue {
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
        impl<'r> sqlx::Decode<'r, $db> for BlindIndexValue {
            fn decode(
                value: <$db as sqlx::Database>::ValueRef<'r>,
            ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
                Ok(BlindIndexValue(<Vec<u8> as sqlx::Decode<'r, $db>>::decode(
                    value,
                )?))
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

    const SPEC: IndexSpec = IndexSpec {
        table: "users",
        name: "email_bidx",
        bits: 256,
        version: 1,
    };

    #[test]
    fn known_answer_and_domain_separation() {
        let key = [7u8; 32];
        let v = compute_with(&key, &SPEC, None, &[Part::Text("ada@example.com")]);
        // HMAC-SHA256 of the documented input, recomputed by hand.
        let mut msg = Vec::new();
        msg.extend_from_slice(DOMAIN);
        msg.extend_from_slice(&5u32.to_be_bytes());
        msg.extend_from_slice(b"users");
        msg.extend_from_slice(&10u32.to_be_bytes());
        msg.extend_from_slice(b"email_bidx");
        msg.push(0);
        msg.extend_from_slice(&256u16.to_be_bytes());
        msg.extend_from_slice(&1u16.to_be_bytes());
        msg.push(1);
        msg.extend_from_slice(&15u32.to_be_bytes());
        msg.extend_from_slice(b"ada@example.com");
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(&msg);
        assert_eq!(v.as_bytes(), &mac.finalize().into_bytes()[..]);

        let other =
            |spec: &IndexSpec, tenant, parts: &[Part<'_>]| compute_with(&key, spec, tenant, parts);
        let base = other(&SPEC, None, &[Part::Text("ab"), Part::Text("c")]);
        for v2 in [
            other(&SPEC, None, &[Part::Text("a"), Part::Text("bc")]),
            other(&SPEC, Some("t"), &[Part::Text("ab"), Part::Text("c")]),
            other(
                &IndexSpec {
                    table: "people",
                    ..SPEC
                },
                None,
                &[Part::Text("ab"), Part::Text("c")],
            ),
            other(&SPEC, None, &[Part::Text("ab"), Part::Null]),
            other(&SPEC, None, &[Part::Text("ab"), Part::Text("")]),
            other(&SPEC, None, &[Part::Text("ab"), Part::Bytes(b"c")]),
        ] {
            assert_ne!(v2, base);
        }
        assert_ne!(
            other(&SPEC, None, &[Part::Null]),
            other(&SPEC, None, &[Part::Text("")])
        );
    }

    #[test]
    fn truncation_keeps_the_leftmost_bits() {
        let key = [1u8; 32];
        let full = compute_with(&key, &SPEC, None, &[Part::Text("x")]);
        for bits in [1u16, 7, 8, 12, 18, 255] {
            let short = compute_with(&key, &IndexSpec { bits, ..SPEC }, None, &[Part::Text("x")]);
            assert_eq!(short.as_bytes().len(), usize::from(bits).div_ceil(8));
            // Different bits, different key input: a 12-bit index is not a prefix
            // of the 256-bit one, but its own value masked to 12 bits.
            let rem = bits % 8;
            if rem != 0 {
                assert_eq!(short.as_bytes().last().unwrap() & !(0xffu8 << (8 - rem)), 0);
            }
        }
        assert_eq!(full.as_bytes().len(), 32);
        assert_eq!(truncate(&[0xff; 32], 12), vec![0xff, 0xf0]);
    }
}
