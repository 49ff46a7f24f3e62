//! Plaintext values outside Rust types: what a job reads from a plaintext
//! column, writes back when decrypting, and compares when verifying.
//!
//! A job that encrypts an existing column must produce exactly the bytes the
//! model's field would ([`super::FieldCodec`]), or `Patient::open` would not
//! return what the column held. The column is read from the database as a
//! [`PlainValue`] (typed by the column's SQL type), and a codec turns it into
//! plaintext bytes: the model's own codec when the job is driven by a model
//! ([`super::describe::EncryptedColumn::encode_plain`]), or a built-in codec
//! named by a [`CodecId`] (what the CLI's `--plaintext-type` selects). Both agree
//! byte for byte for every built-in type; the tests of this module pin that.
//!
//! A `PlainValue` may hold plaintext: text and bytes are zeroized on drop and
//! `Debug` prints only their length.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The built-in plaintext encodings of [`super::FieldCodec`], by name. A model
/// field's codec is `<T as FieldCodec>::CODEC` (or [`CodecId::Json`] for
/// `#[encrypt(json)]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CodecId {
    /// `String`: UTF-8.
    Text,
    /// `Vec<u8>`: as is.
    Bytes,
    /// `bool`: one byte.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `i128`.
    I128,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `u128`.
    U128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `char`.
    Char,
    /// `uuid::Uuid`.
    Uuid,
    /// `chrono::NaiveDate`, `time::Date`.
    Date,
    /// `chrono::NaiveTime`, `time::Time`.
    Time,
    /// `chrono::NaiveDateTime`, `chrono::DateTime<Utc>`, `time::PrimitiveDateTime`
    /// (an instant; naive values as UTC).
    DateTime,
    /// `time::OffsetDateTime` (an instant and its UTC offset).
    OffsetDateTime,
    /// `serde_json::Value`, `Json<T>`, `#[encrypt(json)]`: compact JSON.
    Json,
    /// A user type with its own [`super::FieldCodec`]: jobs need the model's own
    /// codec for it.
    Custom,
}

impl CodecId {
    /// Every built-in codec, in declaration order.
    pub const ALL: &'static [CodecId] = &[
        CodecId::Text,
        CodecId::Bytes,
        CodecId::Bool,
        CodecId::I8,
        CodecId::I16,
        CodecId::I32,
        CodecId::I64,
        CodecId::I128,
        CodecId::U8,
        CodecId::U16,
        CodecId::U32,
        CodecId::U64,
        CodecId::U128,
        CodecId::F32,
        CodecId::F64,
        CodecId::Char,
        CodecId::Uuid,
        CodecId::Date,
        CodecId::Time,
        CodecId::DateTime,
        CodecId::OffsetDateTime,
        CodecId::Json,
    ];

    /// The name used on the command line (`--plaintext-type`) and in model
    /// descriptions.
    pub const fn name(self) -> &'static str {
        match self {
            CodecId::Text => "text",
            CodecId::Bytes => "bytes",
            CodecId::Bool => "bool",
            CodecId::I8 => "i8",
            CodecId::I16 => "i16",
            CodecId::I32 => "i32",
            CodecId::I64 => "i64",
            CodecId::I128 => "i128",
            CodecId::U8 => "u8",
            CodecId::U16 => "u16",
            CodecId::U32 => "u32",
            CodecId::U64 => "u64",
            CodecId::U128 => "u128",
            CodecId::F32 => "f32",
            CodecId::F64 => "f64",
            CodecId::Char => "char",
            CodecId::Uuid => "uuid",
            CodecId::Date => "date",
            CodecId::Time => "time",
            CodecId::DateTime => "datetime",
            CodecId::OffsetDateTime => "offset_datetime",
            CodecId::Json => "json",
            CodecId::Custom => "custom",
        }
    }

    /// The codec of a name given by [`CodecId::name`], plus a few aliases
    /// (`string`, `int`/`integer` = `i64`, `float`/`double` = `f64`,
    /// `timestamp`/`timestamptz` = `datetime`, `jsonb` = `json`, `binary`/`blob`
    /// = `bytes`, `boolean` = `bool`).
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().to_ascii_lowercase();
        let alias = match n.as_str() {
            "string" | "varchar" => Some(CodecId::Text),
            "int" | "integer" | "bigint" => Some(CodecId::I64),
            "smallint" => Some(CodecId::I16),
            "float" | "double" => Some(CodecId::F64),
            "real" => Some(CodecId::F32),
            "timestamp" | "timestamptz" => Some(CodecId::DateTime),
            "jsonb" => Some(CodecId::Json),
            "binary" | "blob" | "bytea" => Some(CodecId::Bytes),
            "boolean" => Some(CodecId::Bool),
            _ => None,
        };
        alias
            .or_else(|| CodecId::ALL.iter().copied().find(|c| c.name() == n))
            .ok_or_else(|| {
                let names: Vec<&str> = CodecId::ALL.iter().map(|c| c.name()).collect();
                Error::Config(format!(
                    "unknown plaintext type {name:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }

    /// The length of every encoded value, for fixed-width codecs.
    pub const fn fixed_len(self) -> Option<usize> {
        Some(match self {
            CodecId::Bool | CodecId::I8 | CodecId::U8 => 1,
            CodecId::I16 | CodecId::U16 => 2,
            CodecId::I32 | CodecId::U32 | CodecId::F32 | CodecId::Char | CodecId::Date => 4,
            CodecId::I64 | CodecId::U64 | CodecId::F64 | CodecId::Time => 8,
            CodecId::DateTime => 12,
            CodecId::I128 | CodecId::U128 | CodecId::Uuid | CodecId::OffsetDateTime => 16,
            CodecId::Text | CodecId::Bytes | CodecId::Json | CodecId::Custom => return None,
        })
    }
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A plaintext value with its type, independent of the Rust type of a model
/// field. See the [module documentation](self).
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum PlainValue {
    /// SQL NULL.
    Null,
    /// Text.
    Text(Zeroizing<String>),
    /// Bytes.
    Bytes(Zeroizing<Vec<u8>>),
    /// A boolean.
    Bool(bool),
    /// An integer of any width (range-checked by the codec that encodes it).
    Int(i128),
    /// A floating-point number (`f32` columns widen exactly).
    Float(f64),
    /// A Unicode scalar value.
    Char(char),
    /// A UUID.
    Uuid([u8; 16]),
    /// A calendar date: days since 1970-01-01.
    Date {
        /// Days since 1970-01-01 (negative before).
        days: i32,
    },
    /// A time of day.
    Time {
        /// Seconds since midnight.
        secs: u32,
        /// Nanoseconds (up to 1,999,999,999 for a leap second).
        nanos: u32,
    },
    /// An instant (timestamps without time zone are read as UTC).
    DateTime {
        /// Seconds since the Unix epoch.
        secs: i64,
        /// Nanoseconds.
        nanos: u32,
    },
    /// An instant with its UTC offset.
    OffsetDateTime {
        /// Seconds since the Unix epoch.
        secs: i64,
        /// Nanoseconds.
        nanos: u32,
        /// UTC offset in seconds.
        offset: i32,
    },
    /// A JSON document.
    Json(serde_json::Value),
}

impl fmt::Debug for PlainValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlainValue::Null => f.write_str("Null"),
            PlainValue::Text(t) => write!(f, "Text(<{} bytes>)", t.len()),
            PlainValue::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
            PlainValue::Json(_) => f.write_str("Json(<redacted>)"),
            PlainValue::Bool(_) => f.write_str("Bool(<redacted>)"),
            PlainValue::Int(_) => f.write_str("Int(<redacted>)"),
            PlainValue::Float(_) => f.write_str("Float(<redacted>)"),
            PlainValue::Char(_) => f.write_str("Char(<redacted>)"),
            PlainValue::Uuid(_) => f.write_str("Uuid(<redacted>)"),
            PlainValue::Date { .. } => f.write_str("Date(<redacted>)"),
            PlainValue::Time { .. } => f.write_str("Time(<redacted>)"),
            PlainValue::DateTime { .. } => f.write_str("DateTime(<redacted>)"),
            PlainValue::OffsetDateTime { .. } => f.write_str("OffsetDateTime(<redacted>)"),
        }
    }
}

impl PlainValue {
    /// An upper bound of the length of this value's plaintext encoding under
    /// any built-in codec, to reserve a plaintext buffer once (JSON text is
    /// measured without being written).
    pub fn size_hint(&self) -> usize {
        match self {
            PlainValue::Null => 0,
            PlainValue::Text(t) => t.len(),
            PlainValue::Bytes(b) => b.len(),
            PlainValue::Json(j) => super::codec::json_len(j),
            _ => 16,
        }
    }

    /// What kind of value this is, for error messages (never the value).
    pub fn kind(&self) -> &'static str {
        match self {
            PlainValue::Null => "NULL",
            PlainValue::Text(_) => "text",
            PlainValue::Bytes(_) => "bytes",
            PlainValue::Bool(_) => "boolean",
            PlainValue::Int(_) => "integer",
            PlainValue::Float(_) => "float",
            PlainValue::Char(_) => "char",
            PlainValue::Uuid(_) => "uuid",
            PlainValue::Date { .. } => "date",
            PlainValue::Time { .. } => "time",
            PlainValue::DateTime { .. } => "timestamp",
            PlainValue::OffsetDateTime { .. } => "timestamp with offset",
            PlainValue::Json(_) => "json",
        }
    }
}

fn mismatch(codec: CodecId, v: &PlainValue) -> Error {
    Error::codec(
        "PlainValue",
        format!("a {} value cannot be encoded as {}", v.kind(), codec.name()),
    )
}

fn exact<const N: usize>(codec: CodecId, bytes: &[u8]) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| {
        Error::codec(
            "PlainValue",
            format!("{} expects {N} bytes, found {}", codec.name(), bytes.len()),
        )
    })
}

macro_rules! int_codec {
    ($codec:expr, $v:expr, $out:expr, $t:ty) => {{
        let PlainValue::Int(i) = $v else {
            return Err(mismatch($codec, $v));
        };
        let n = <$t>::try_from(*i).map_err(|_| {
            Error::codec(
                "PlainValue",
                format!("integer out of range for {}", $codec.name()),
            )
        })?;
        $out.extend_from_slice(&n.to_be_bytes());
    }};
}

/// Append the plaintext encoding of `v` under the built-in codec `codec`:
/// byte for byte what `<T as FieldCodec>::encode` writes for the Rust type `T`
/// of that codec. NULL is not encoded (a caller maps it to SQL NULL, or to the
/// `hide_null` marker).
pub fn encode_plain(codec: CodecId, v: &PlainValue, out: &mut Vec<u8>) -> Result<()> {
    use CodecId as C;
    match codec {
        C::Text => match v {
            PlainValue::Text(s) => out.extend_from_slice(s.as_bytes()),
            _ => return Err(mismatch(codec, v)),
        },
        C::Bytes => match v {
            PlainValue::Bytes(b) => out.extend_from_slice(b),
            PlainValue::Text(s) => out.extend_from_slice(s.as_bytes()),
            _ => return Err(mismatch(codec, v)),
        },
        C::Bool => match v {
            PlainValue::Bool(b) => out.push(u8::from(*b)),
            _ => return Err(mismatch(codec, v)),
        },
        C::I8 => int_codec!(codec, v, out, i8),
        C::I16 => int_codec!(codec, v, out, i16),
        C::I32 => int_codec!(codec, v, out, i32),
        C::I64 => int_codec!(codec, v, out, i64),
        C::I128 => int_codec!(codec, v, out, i128),
        C::U8 => int_codec!(codec, v, out, u8),
        C::U16 => int_codec!(codec, v, out, u16),
        C::U32 => int_codec!(codec, v, out, u32),
        C::U64 => int_codec!(codec, v, out, u64),
        C::U128 => int_codec!(codec, v, out, u128),
        C::F32 => match v {
            PlainValue::Float(f) => {
                let narrow = *f as f32;
                if f64::from(narrow).to_bits() != f.to_bits() && !f.is_nan() {
                    return Err(Error::codec(
                        "PlainValue",
                        "value does not fit an f32 exactly",
                    ));
                }
                out.extend_from_slice(&narrow.to_be_bytes());
            }
            _ => return Err(mismatch(codec, v)),
        },
        C::F64 => match v {
            PlainValue::Float(f) => out.extend_from_slice(&f.to_be_bytes()),
            _ => return Err(mismatch(codec, v)),
        },
        C::Char => match v {
            PlainValue::Char(c) => out.extend_from_slice(&u32::from(*c).to_be_bytes()),
            _ => return Err(mismatch(codec, v)),
        },
        C::Uuid => match v {
            PlainValue::Uuid(u) => out.extend_from_slice(u),
            _ => return Err(mismatch(codec, v)),
        },
        C::Date => match v {
            PlainValue::Date { days } => out.extend_from_slice(&days.to_be_bytes()),
            _ => return Err(mismatch(codec, v)),
        },
        C::Time => match v {
            PlainValue::Time { secs, nanos } => {
                out.extend_from_slice(&secs.to_be_bytes());
                out.extend_from_slice(&nanos.to_be_bytes());
            }
            _ => return Err(mismatch(codec, v)),
        },
        C::DateTime => match v {
            PlainValue::DateTime { secs, nanos }
            | PlainValue::OffsetDateTime { secs, nanos, .. } => {
                out.extend_from_slice(&secs.to_be_bytes());
                out.extend_from_slice(&nanos.to_be_bytes());
            }
            _ => return Err(mismatch(codec, v)),
        },
        C::OffsetDateTime => match v {
            PlainValue::OffsetDateTime {
                secs,
                nanos,
                offset,
            } => {
                out.extend_from_slice(&secs.to_be_bytes());
                out.extend_from_slice(&nanos.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
            }
            PlainValue::DateTime { secs, nanos } => {
                out.extend_from_slice(&secs.to_be_bytes());
                out.extend_from_slice(&nanos.to_be_bytes());
                out.extend_from_slice(&0i32.to_be_bytes());
            }
            _ => return Err(mismatch(codec, v)),
        },
        C::Json => match v {
            PlainValue::Json(j) => super::codec::json_encode(j, out)?,
            PlainValue::Text(s) => {
                let j: serde_json::Value = super::codec::json_decode(s.as_bytes())?;
                super::codec::json_encode(&j, out)?;
            }
            _ => return Err(mismatch(codec, v)),
        },
        C::Custom => {
            return Err(Error::Config(
                "a custom field type has no built-in codec: run the job with the model, whose codec it is".into(),
            ));
        }
    }
    Ok(())
}

/// Decode plaintext bytes written by the built-in codec `codec` (the inverse
/// of [`encode_plain`]).
pub fn decode_plain(codec: CodecId, bytes: &[u8]) -> Result<PlainValue> {
    use CodecId as C;
    macro_rules! int {
        ($t:ty) => {{
            PlainValue::Int(i128::from(<$t>::from_be_bytes(
                exact::<{ size_of::<$t>() }>(codec, bytes)?,
            )))
        }};
    }
    Ok(match codec {
        C::Text => PlainValue::Text(Zeroizing::new(
            std::str::from_utf8(bytes)
                .map_err(|e| {
                    Error::codec(
                        "String",
                        format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                    )
                })?
                .to_owned(),
        )),
        C::Bytes => PlainValue::Bytes(Zeroizing::new(bytes.to_vec())),
        C::Bool => match exact::<1>(codec, bytes)? {
            [0] => PlainValue::Bool(false),
            [1] => PlainValue::Bool(true),
            _ => return Err(Error::codec("bool", "invalid byte")),
        },
        C::I8 => int!(i8),
        C::I16 => int!(i16),
        C::I32 => int!(i32),
        C::I64 => int!(i64),
        C::I128 => PlainValue::Int(i128::from_be_bytes(exact::<16>(codec, bytes)?)),
        C::U8 => int!(u8),
        C::U16 => int!(u16),
        C::U32 => int!(u32),
        C::U64 => int!(u64),
        C::U128 => {
            let v = u128::from_be_bytes(exact::<16>(codec, bytes)?);
            PlainValue::Int(
                i128::try_from(v).map_err(|_| Error::codec("u128", "value above i128::MAX"))?,
            )
        }
        C::F32 => PlainValue::Float(f64::from(f32::from_be_bytes(exact::<4>(codec, bytes)?))),
        C::F64 => PlainValue::Float(f64::from_be_bytes(exact::<8>(codec, bytes)?)),
        C::Char => {
            let v = u32::from_be_bytes(exact::<4>(codec, bytes)?);
            PlainValue::Char(
                char::from_u32(v)
                    .ok_or_else(|| Error::codec("char", "not a Unicode scalar value"))?,
            )
        }
        C::Uuid => PlainValue::Uuid(exact::<16>(codec, bytes)?),
        C::Date => PlainValue::Date {
            days: i32::from_be_bytes(exact::<4>(codec, bytes)?),
        },
        C::Time => {
            let b = exact::<8>(codec, bytes)?;
            PlainValue::Time {
                secs: u32::from_be_bytes(b[..4].try_into().expect("4 bytes")),
                nanos: u32::from_be_bytes(b[4..].try_into().expect("4 bytes")),
            }
        }
        C::DateTime => {
            let b = exact::<12>(codec, bytes)?;
            PlainValue::DateTime {
                secs: i64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                nanos: u32::from_be_bytes(b[8..].try_into().expect("4 bytes")),
            }
        }
        C::OffsetDateTime => {
            let b = exact::<16>(codec, bytes)?;
            PlainValue::OffsetDateTime {
                secs: i64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                nanos: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
                offset: i32::from_be_bytes(b[12..].try_into().expect("4 bytes")),
            }
        }
        C::Json => PlainValue::Json(super::codec::json_decode(bytes)?),
        C::Custom => {
            return Err(Error::Config(
                "a custom field type has no built-in codec: run the job with the model, whose codec it is".into(),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FieldCodec;

    fn enc<T: FieldCodec>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode(&mut out).expect("encode");
        out
    }

    fn plain(codec: CodecId, v: PlainValue) -> Vec<u8> {
        let mut out = Vec::new();
        encode_plain(codec, &v, &mut out).expect("encode_plain");
        assert_eq!(decode_plain(codec, &out).expect("decode_plain"), v);
        out
    }

    #[test]
    fn built_in_codecs_match_field_codecs() {
        use CodecId as C;
        let text = |s: &str| PlainValue::Text(Zeroizing::new(s.to_owned()));
        assert_eq!(plain(C::Text, text("hé")), enc(&String::from("hé")));
        assert_eq!(
            plain(C::Bytes, PlainValue::Bytes(Zeroizing::new(vec![0, 255]))),
            enc(&vec![0u8, 255])
        );
        assert_eq!(plain(C::Bool, PlainValue::Bool(true)), enc(&true));
        assert_eq!(plain(C::I16, PlainValue::Int(-2)), enc(&-2_i16));
        assert_eq!(plain(C::I32, PlainValue::Int(-2)), enc(&-2_i32));
        assert_eq!(plain(C::I64, PlainValue::Int(1 << 40)), enc(&(1_i64 << 40)));
        assert_eq!(plain(C::U32, PlainValue::Int(7)), enc(&7_u32));
        assert_eq!(plain(C::F64, PlainValue::Float(1.5)), enc(&1.5_f64));
        assert_eq!(plain(C::F32, PlainValue::Float(1.5)), enc(&1.5_f32));
        assert_eq!(plain(C::Char, PlainValue::Char('✓')), enc(&'✓'));
        assert_eq!(
            plain(
                C::Json,
                PlainValue::Json(serde_json::json!({"a": [1, null]}))
            ),
            enc(&serde_json::json!({"a": [1, null]}))
        );
        assert_eq!(plain(C::Date, PlainValue::Date { days: 1 }), [0, 0, 0, 1]);
        assert_eq!(
            plain(
                C::DateTime,
                PlainValue::DateTime {
                    secs: 256,
                    nanos: 1
                }
            ),
            [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
        );
        for c in CodecId::ALL {
            assert_eq!(CodecId::parse(c.name()).expect("parse"), *c);
        }
    }

    #[test]
    fn mismatches_and_ranges_are_codec_errors() {
        let mut out = Vec::new();
        assert!(matches!(
            encode_plain(CodecId::I8, &PlainValue::Int(300), &mut out),
            Err(Error::Codec { .. })
        ));
        assert!(matches!(
            encode_plain(CodecId::Date, &PlainValue::Int(3), &mut out),
            Err(Error::Codec { .. })
        ));
        assert!(matches!(
            decode_plain(CodecId::I32, &[0; 3]),
            Err(Error::Codec { .. })
        ));
        assert!(CodecId::parse("nope").is_err());
        let secret = PlainValue::Text(Zeroizing::new("ada@example.com".into()));
        assert!(!format!("{secret:?}").contains("ada"));
    }
}
