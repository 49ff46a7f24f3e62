//! The plaintext encoding of field values: [`FieldCodec`].
//!
//! Before a field is encrypted it is turned into bytes, and after it is
//! decrypted the bytes are turned back into the field's type. The encoding of
//! every supported type is fixed and documented here, because it is part of what
//! is stored: changing it would make stored values unreadable. The tests of this
//! module pin exact bytes.
//!
//! | Rust type | plaintext bytes |
//! |-----------|-----------------|
//! | `String` | UTF-8 bytes, no terminator |
//! | `Vec<u8>` | the bytes as they are |
//! | `bool` | one byte, `0x00` false or `0x01` true |
//! | `i8` … `i128`, `u8` … `u128` | fixed width, two's complement, big-endian (an `i32` is always 4 bytes, so the length never reveals the magnitude) |
//! | `f32`, `f64` | IEEE 754 bits, big-endian (4 / 8 bytes) |
//! | `char` | its scalar value as a big-endian `u32` |
//! | `uuid::Uuid` (feature `uuid`) | the 16 bytes of the UUID |
//! | `chrono::NaiveDate`, `time::Date` | days since 1970-01-01 as big-endian `i32` (4 bytes) |
//! | `chrono::NaiveTime`, `time::Time` | seconds since midnight, then nanoseconds, each big-endian `u32` (8 bytes) |
//! | `chrono::NaiveDateTime`, `chrono::DateTime<Utc>`, `time::PrimitiveDateTime` | seconds since the Unix epoch as big-endian `i64`, then nanoseconds as big-endian `u32` (12 bytes; naive values are read as UTC) |
//! | `time::OffsetDateTime` | the 12 bytes above for the instant, then the UTC offset in seconds as big-endian `i32` (16 bytes) |
//! | `serde_json::Value` | compact JSON text (`serde_json::to_vec`) |
//! | [`Json<T>`] / `#[encrypt(json)]` for `T: Serialize + DeserializeOwned` | compact JSON text of `T` (`serde_json::to_vec`) |
//! | `Option<T>` as a whole (what `#[encrypt(hide_null)]` stores) | `Some(v)`: `0x01`, then the encoding of `v`. `None`: `0x00`, then, for a fixed-width `T`, as many `0x00` bytes as `T` encodes to, so `None` and `Some` have the same length (a lone `0x00`, written for every `T` by 0.1, still decodes) |
//!
//! The chrono and time encodings are identical, so a column written with one
//! crate reads with the other. `usize`/`isize` are not supported: their width
//! depends on the platform.
//!
//! Decoding never panics: wrong lengths, invalid UTF-8, out-of-range dates and
//! invalid JSON are [`Error::Codec`] errors, which name the
//! type but never contain the plaintext.

use serde::{Serialize, de::DeserializeOwned};
use zeroize::Zeroizing;

use super::plain::{CodecId, PlainValue};
use crate::error::{Error, Result};

/// Conversion of a field value to and from the plaintext bytes that are
/// encrypted. See the [module documentation](self) for the encoding of each type.
///
/// Implement it for your own types to store them in encrypted fields; the
/// encoding you choose becomes part of your stored data, so keep it stable.
pub trait FieldCodec: Sized {
    /// Which built-in encoding this is ([`CodecId::Custom`] for your own
    /// types). Jobs use it to encrypt an existing plaintext column into exactly
    /// the bytes this type would write; leave the default for your own types.
    const CODEC: CodecId = CodecId::Custom;

    /// The length of every encoding, for fixed-width types: `hide_null` fills
    /// `None` to this length, so a stored `None` is as long as a `Some`. A
    /// variable-width type (`None` here) needs `pad = N` next to `hide_null`.
    const FIXED_LEN: Option<usize> = Self::CODEC.fixed_len();

    /// Append the plaintext encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<()>;

    /// Decode a value from exactly `bytes` (the whole decrypted plaintext).
    fn decode(bytes: &[u8]) -> Result<Self>;

    /// Decode a value from the decrypted buffer itself. Types that hold their
    /// bytes (`String`, `Vec<u8>`) take the buffer over instead of copying it,
    /// so the plaintext exists once, in the value; the default decodes from
    /// the slice, and the buffer is zeroized when it drops.
    fn decode_owned(bytes: Zeroizing<Vec<u8>>) -> Result<Self> {
        Self::decode(&bytes)
    }

    /// The number of bytes [`FieldCodec::encode`] will append, or an upper
    /// bound: the caller reserves it first, so the plaintext buffer never
    /// reallocates (a reallocation would leave an unzeroized copy behind).
    /// The default is [`FieldCodec::FIXED_LEN`], or 0 for a variable-width
    /// type: override it for your own variable-width types (sealing logs a
    /// warning when a buffer had to grow).
    fn size_hint(&self) -> usize {
        Self::FIXED_LEN.unwrap_or(0)
    }

    /// The value of a plaintext read from a database column (see
    /// [`PlainValue`]). Built-in types convert through their [`CodecId`];
    /// your own types may override this to support jobs without a model.
    fn from_plain(value: &PlainValue) -> Result<Self> {
        let mut buf = Zeroizing::new(Vec::with_capacity(value.size_hint()));
        super::plain::encode_plain(Self::CODEC, value, &mut buf)?;
        Self::decode(&buf)
    }

    /// This value as a [`PlainValue`] (what decrypt-out writes back to a
    /// plaintext column, and what verify compares).
    fn to_plain(&self) -> Result<PlainValue> {
        let mut buf = Zeroizing::new(Vec::with_capacity(self.size_hint()));
        self.encode(&mut buf)?;
        super::plain::decode_plain(Self::CODEC, &buf)
    }
}

fn exact<const N: usize>(type_name: &'static str, bytes: &[u8]) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| {
        Error::codec(
            type_name,
            format!("expected {N} bytes, found {}", bytes.len()),
        )
    })
}

impl FieldCodec for String {
    const CODEC: CodecId = CodecId::Text;
    fn size_hint(&self) -> usize {
        self.len()
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| invalid_utf8(e.valid_up_to()))
    }
    fn decode_owned(mut bytes: Zeroizing<Vec<u8>>) -> Result<Self> {
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Err(invalid_utf8(e.valid_up_to()));
        }
        let vec = std::mem::take(&mut *bytes);
        // Checked just above; the conversion cannot fail, but if it did the
        // bytes would be wiped and reported like any invalid UTF-8.
        String::from_utf8(vec).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let _ = Zeroizing::new(e.into_bytes());
            invalid_utf8(at)
        })
    }
}

fn invalid_utf8(valid_up_to: usize) -> Error {
    Error::codec("String", format!("invalid UTF-8 at byte {valid_up_to}"))
}

impl FieldCodec for Vec<u8> {
    const CODEC: CodecId = CodecId::Bytes;
    fn size_hint(&self) -> usize {
        self.len()
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(self);
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(bytes.to_vec())
    }
    fn decode_owned(mut bytes: Zeroizing<Vec<u8>>) -> Result<Self> {
        Ok(std::mem::take(&mut *bytes))
    }
}

impl FieldCodec for bool {
    const CODEC: CodecId = CodecId::Bool;
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.push(u8::from(*self));
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        match exact::<1>("bool", bytes)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [b] => Err(Error::codec("bool", format!("invalid byte 0x{b:02x}"))),
        }
    }
}

macro_rules! be_numbers {
    ($($t:ty => $c:ident),*) => {$(
        impl FieldCodec for $t {
            const CODEC: CodecId = CodecId::$c;
            fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
                out.extend_from_slice(&self.to_be_bytes());
                Ok(())
            }
            fn decode(bytes: &[u8]) -> Result<Self> {
                Ok(<$t>::from_be_bytes(exact::<{ size_of::<$t>() }>(stringify!($t), bytes)?))
            }
        }
    )*};
}
be_numbers!(
    i8 => I8, i16 => I16, i32 => I32, i64 => I64, i128 => I128, u8 => U8, u16 => U16,
    u32 => U32, u64 => U64, u128 => U128, f32 => F32, f64 => F64
);

impl FieldCodec for char {
    const CODEC: CodecId = CodecId::Char;
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&u32::from(*self).to_be_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        let v = u32::from_be_bytes(exact::<4>("char", bytes)?);
        char::from_u32(v).ok_or_else(|| Error::codec("char", "not a Unicode scalar value"))
    }
}

impl<T: FieldCodec> FieldCodec for Option<T> {
    const FIXED_LEN: Option<usize> = match T::FIXED_LEN {
        Some(n) => Some(n + 1),
        None => None,
    };
    fn size_hint(&self) -> usize {
        1 + match self {
            Some(v) => v.size_hint(),
            None => T::FIXED_LEN.unwrap_or(0),
        }
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            None => {
                out.push(0);
                out.resize(out.len() + T::FIXED_LEN.unwrap_or(0), 0);
                Ok(())
            }
            Some(v) => {
                out.push(1);
                v.encode(out)
            }
        }
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((0, rest)) => hidden_none(rest, T::FIXED_LEN).map(|()| None),
            Some((1, rest)) => T::decode(rest).map(Some),
            Some((b, _)) => Err(Error::codec("Option", format!("invalid marker 0x{b:02x}"))),
            None => Err(Error::codec("Option", "empty value has no NULL marker")),
        }
    }
}

/// Check what follows the `0x00` marker of a `None`: nothing (how 0.1 wrote
/// every `None`), or exactly `fixed_len` zero bytes for a fixed-width type.
pub(crate) fn hidden_none(rest: &[u8], fixed_len: Option<usize>) -> Result<()> {
    if rest.is_empty() || (Some(rest.len()) == fixed_len && rest.iter().all(|&b| b == 0)) {
        Ok(())
    } else {
        Err(Error::codec(
            "Option",
            "trailing bytes after the NULL marker",
        ))
    }
}

impl FieldCodec for serde_json::Value {
    const CODEC: CodecId = CodecId::Json;
    fn size_hint(&self) -> usize {
        json_len(self)
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        json_encode(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        json_decode(bytes)
    }
}

/// A field stored as compact JSON text (`serde_json::to_vec`), for any
/// `T: Serialize + DeserializeOwned`. `#[encrypt(json)]` on a plain `T` field
/// stores exactly the same bytes, without the wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Json<T>(pub T);

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize + DeserializeOwned> FieldCodec for Json<T> {
    const CODEC: CodecId = CodecId::Json;
    fn size_hint(&self) -> usize {
        json_len(&self.0)
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        json_encode(&self.0, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        json_decode(bytes).map(Json)
    }
}

/// The encoding of [`Json<T>`] and `#[encrypt(json)]`: compact JSON text.
pub fn json_encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    // serde_json errors name the position and kind of problem, never the data.
    serde_json::to_writer(out, value).map_err(|e| {
        Error::codec(
            std::any::type_name::<T>(),
            format!("JSON encoding failed: {}", e.classify_msg()),
        )
    })
}

/// The exact length of the compact JSON of `value` (0 if it cannot be
/// serialised; encoding then reports the error), computed without buffering
/// the text, so the plaintext buffer can be reserved once.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, value) {
        Ok(()) => c.0,
        Err(_) => 0,
    }
}

/// The decoding of [`Json<T>`] and `#[encrypt(json)]`.
pub fn json_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::codec(
            std::any::type_name::<T>(),
            format!(
                "invalid JSON ({}) at line {} column {}",
                e.classify_msg(),
                e.line(),
                e.column()
            ),
        )
    })
}

trait ClassifyMsg {
    fn classify_msg(&self) -> &'static str;
}

impl ClassifyMsg for serde_json::Error {
    // Only the category: serde_json's messages may quote parts of the input
    // ("invalid type: string \"...\""), which would leak plaintext into errors.
    fn classify_msg(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "data does not match the type",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}

#[cfg(feature = "uuid")]
impl FieldCodec for uuid::Uuid {
    const CODEC: CodecId = CodecId::Uuid;
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(uuid::Uuid::from_bytes(exact::<16>("uuid::Uuid", bytes)?))
    }
}

/// Shared helpers of the date/time encodings.
#[cfg(any(feature = "chrono", feature = "time"))]
mod datetime {
    use super::exact;
    use crate::error::Result;

    pub(super) fn put_instant(out: &mut Vec<u8>, secs: i64, nanos: u32) {
        out.extend_from_slice(&secs.to_be_bytes());
        out.extend_from_slice(&nanos.to_be_bytes());
    }

    pub(super) fn get_instant(ty: &'static str, b: &[u8]) -> Result<(i64, u32)> {
        let b = exact::<12>(ty, b)?;
        let secs = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let nanos = u32::from_be_bytes(b[8..].try_into().expect("4 bytes"));
        Ok((secs, nanos))
    }

    pub(super) fn get_time(ty: &'static str, b: &[u8]) -> Result<(u32, u32)> {
        let b = exact::<8>(ty, b)?;
        let secs = u32::from_be_bytes(b[..4].try_into().expect("4 bytes"));
        let nanos = u32::from_be_bytes(b[4..].try_into().expect("4 bytes"));
        Ok((secs, nanos))
    }

    pub(super) fn put_time(out: &mut Vec<u8>, secs: u32, nanos: u32) {
        out.extend_from_slice(&secs.to_be_bytes());
        out.extend_from_slice(&nanos.to_be_bytes());
    }
}

#[cfg(feature = "chrono")]
mod chrono_impls {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};

    use super::{CodecId, FieldCodec, datetime, exact};
    use crate::error::{Error, Result};

    const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");

    impl FieldCodec for NaiveDate {
        const CODEC: CodecId = CodecId::Date;
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            // chrono dates span about ±262,000 years: the day count fits an i32.
            let days = i32::try_from(self.signed_duration_since(EPOCH).num_days())
                .map_err(|_| Error::codec("chrono::NaiveDate", "date out of range"))?;
            out.extend_from_slice(&days.to_be_bytes());
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<Self> {
            let days = i32::from_be_bytes(exact::<4>("chrono::NaiveDate", bytes)?);
            EPOCH
                .checked_add_signed(chrono::Duration::days(i64::from(days)))
                .ok_or_else(|| Error::codec("chrono::NaiveDate", "date out of range"))
        }
    }

    impl FieldCodec for NaiveTime {
        const CODEC: CodecId = CodecId::Time;
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            datetime::put_time(out, self.num_seconds_from_midnight(), self.nanosecond());
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<Self> {
            let (secs, nanos) = datetime::get_time("chrono::NaiveTime", bytes)?;
            NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
                .ok_or_else(|| Error::codec("chrono::NaiveTime", "time out of range"))
        }
    }

    impl FieldCodec for DateTime<Utc> {
        const CODEC: CodecId = CodecId::DateTime;
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            datetime::put_instant(out, self.timestamp(), self.timestamp_subsec_nanos());
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<Self> {
            let (secs, nanos) = datetime::get_instant("chrono::DateTime<Utc>", bytes)?;
            DateTime::from_timestamp(secs, nanos)
                .ok_or_else(|| Error::codec("chrono::DateTime<Utc>", "instant out of range"))
        }
    }

    impl FieldCodec for NaiveDateTime {
        const CODEC: CodecId = CodecId::DateTime;
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            self.and_utc().encode(out)
        }
        fn decode(bytes: &[u8]) -> Result<Self> {
            let (secs, nanos) = datetime::get_instant("chrono::NaiveDateTime", bytes)?;
            DateTime::from_timestamp(secs, nanos)
                .map(|d| d.naive_utc())
                .ok_or_else(|| Error::codec("chrono::NaiveDateTime", "instant out of range"))
        }
    }
}

#[cfg(feature = "time")]
mod time_impls {
    use time::{Date, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

    use super::{CodecId, FieldCodec, datetime, exact};
    use crate::error::{Error, Result};

    // Julian day number of 1970-01-01.
    const EPOCH_JULIAN: i32 = 2_440_588;

    impl FieldCodec for Date {
        const CODEC: CodecId = CodecId::Date;
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            let days = self.to_julian_day() - EPOCH_JULIAN;
            out.extend_from_slice(&days.to_be_bytes());
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<Self> {
            let days = i32::from_be_bytes(exact::<4>("time::Date", bytes)?);
            days.checked_add(EPOCH_JULIAN)
                .and_then(|j| Date::from_julian_day(j).ok())
                .ok_or_else(|| Error::codec("time::Date", "date out of range"))
        }
    }

    impl FieldCodec for Time {
        const CODEC: CodecId = CodecId::Time;
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            let (h, m, s, n) = self.as_hms_nano();
            datetime::put_time(
                out,
                u32::from(h) * 3600 + u32::from(m) * 60 + u32::from(s),
                n,
            );
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<Self> {
            let (secs, nanos) = datetime::get_time("time::Time", bytes)?;
            let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
            u8::try_from(h)
                .ok()
                .and_then(|h| Time::from_hms_nano(h, m as u8, s as u8, nanos).ok())
                .ok_or_else(|| Error::codec("time::Time", "time out of range"))
        }
    }

    impl FieldCodec for PrimitiveDateTime {
        const CODEC: CodecId = CodecId::DateTime;
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            let utc = self.assume_utc();
            datetime::put_instant(out, utc.unix_timestamp(), utc.nanosecond());
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<Self> {
            let (secs, nanos) = datetime::get_instant("time::PrimitiveDateTime", bytes)?;
            instant("time::PrimitiveDateTime", secs, nanos)
                .map(|t| PrimitiveDateTime::new(t.date(), t.time()))
        }
    }

    impl FieldCodec for OffsetDateTime {
        const CODEC: CodecId = CodecId::OffsetDateTime;
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            datetime::put_instant(out, self.unix_timestamp(), self.nanosecond());
            out.extend_from_slice(&self.offset().whole_seconds().to_be_bytes());
            Ok(())
        }
        fn decode(bytes: &[u8]) -> Result<Self> {
            const TY: &str = "time::OffsetDateTime";
            let b = exact::<16>(TY, bytes)?;
            let (secs, nanos) = datetime::get_instant(TY, &b[..12])?;
            let offset = i32::from_be_bytes(b[12..].try_into().expect("4 bytes"));
            let offset = UtcOffset::from_whole_seconds(offset)
                .map_err(|_| Error::codec(TY, "UTC offset out of range"))?;
            instant(TY, secs, nanos)?
                .checked_to_offset(offset)
                .ok_or_else(|| Error::codec(TY, "instant out of range"))
        }
    }

    fn instant(ty: &'static str, secs: i64, nanos: u32) -> Result<OffsetDateTime> {
        if nanos >= 1_000_000_000 {
            return Err(Error::codec(ty, "nanoseconds out of range"));
        }
        OffsetDateTime::from_unix_timestamp(secs)
            .ok()
            .and_then(|t| t.replace_nanosecond(nanos).ok())
            .ok_or_else(|| Error::codec(ty, "instant out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<T: FieldCodec>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode(&mut out).expect("encode");
        out
    }

    fn round<T: FieldCodec + PartialEq + std::fmt::Debug>(v: T) {
        assert_eq!(T::decode(&enc(&v)).expect("decode"), v);
    }

    fn is_codec_err<T: std::fmt::Debug>(r: Result<T>) {
        match r {
            Err(Error::Codec { .. }) => {}
            other => panic!("expected Error::Codec, got {other:?}"),
        }
    }

    #[test]
    fn pinned_bytes() {
        assert_eq!(enc(&String::from("hé")), b"h\xc3\xa9");
        assert_eq!(enc(&vec![0u8, 255]), [0, 255]);
        assert_eq!(enc(&true), [1]);
        assert_eq!(enc(&false), [0]);
        assert_eq!(enc(&-2_i32), [0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(enc(&1_i64), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(enc(&0x0102_u16), [1, 2]);
        assert_eq!(enc(&1.5_f64), [0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(&1.0_f32), [0x3f, 0x80, 0, 0]);
        assert_eq!(enc(&'A'), [0, 0, 0, 0x41]);
        assert_eq!(enc(&None::<i16>), [0, 0, 0]);
        assert_eq!(enc(&Some(7_i16)), [1, 0, 7]);
        assert_eq!(enc(&None::<String>), [0]);
        assert_eq!(enc(&Some(String::from("a"))), [1, b'a']);
        assert_eq!(
            enc(&serde_json::json!({"a": [1, null]})),
            br#"{"a":[1,null]}"#
        );
        assert_eq!(enc(&Json(vec![String::from("x"); 2])), br#"["x","x"]"#);
    }

    #[test]
    fn round_trips() {
        round(String::new());
        round(String::from("ünïcödé ✓"));
        round(Vec::<u8>::new());
        round(vec![1u8, 2, 3]);
        round(true);
        round(false);
        round(i8::MIN);
        round(i16::MAX);
        round(i32::MIN);
        round(i64::MIN);
        round(i128::MAX);
        round(u8::MAX);
        round(u16::MAX);
        round(u32::MAX);
        round(u64::MAX);
        round(u128::MAX);
        round(f32::MIN_POSITIVE);
        round(-0.0_f64);
        round('✓');
        round(Some(String::from("x")));
        round(None::<String>);
        round(Some(None::<i8>));
        round(serde_json::json!({"k": [true, 1.5, "s"]}));
        round(Json(std::collections::BTreeMap::from([(
            1,
            String::from("a"),
        )])));
        let nan = f64::decode(&enc(&f64::NAN)).expect("decode");
        assert!(nan.is_nan());
    }

    #[test]
    fn malformed_input_is_a_codec_error() {
        is_codec_err(String::decode(&[0xff, 0xfe]));
        is_codec_err(bool::decode(&[2]));
        is_codec_err(bool::decode(&[]));
        is_codec_err(bool::decode(&[0, 0]));
        is_codec_err(i8::decode(&[]));
        is_codec_err(i32::decode(&[1, 2, 3]));
        is_codec_err(i64::decode(&[0; 9]));
        is_codec_err(u128::decode(&[0; 15]));
        is_codec_err(f32::decode(&[0; 8]));
        is_codec_err(f64::decode(&[0; 4]));
        is_codec_err(char::decode(&[0, 0, 0xd8, 0]));
        is_codec_err(char::decode(&[0, 0x11, 0, 0]));
        is_codec_err(Option::<i8>::decode(&[]));
        is_codec_err(Option::<i8>::decode(&[2, 0]));
        is_codec_err(Option::<i8>::decode(&[0, 1]));
        is_codec_err(Option::<i8>::decode(&[0, 0, 0]));
        is_codec_err(Option::<String>::decode(&[0, 0]));
        is_codec_err(Option::<i8>::decode(&[1]));
        is_codec_err(serde_json::Value::decode(b"{"));
        is_codec_err(Json::<Vec<u8>>::decode(br#"["x"]"#));
        is_codec_err(Json::<u8>::decode(b""));
    }

    #[test]
    fn hidden_none_has_the_length_of_some_for_fixed_width_types() {
        assert_eq!(<Option<i64>>::FIXED_LEN, Some(9));
        assert_eq!(<Option<Option<u8>>>::FIXED_LEN, Some(3));
        assert_eq!(<Option<String>>::FIXED_LEN, None);
        assert_eq!(enc(&None::<i64>).len(), enc(&Some(i64::MAX)).len());
        assert_eq!(enc(&None::<u128>).len(), 17);
        // What 0.1 wrote for every `None`, and what it writes now.
        assert_eq!(Option::<i64>::decode(&[0]).expect("legacy"), None);
        assert_eq!(Option::<i64>::decode(&[0; 9]).expect("filled"), None);
        assert_eq!(Option::<String>::decode(&[0]).expect("variable"), None);
        round(None::<i64>);
        round(Some(None::<i64>));
    }

    #[test]
    fn size_hints_are_exact_for_built_in_types() {
        fn exact<T: FieldCodec>(v: T) {
            assert_eq!(
                v.size_hint(),
                enc(&v).len(),
                "{}",
                std::any::type_name::<T>()
            );
        }
        exact(String::from("héllo"));
        exact(vec![1u8, 2, 3]);
        exact(7_i32);
        exact(Some(String::from("x")));
        exact(None::<String>);
        exact(None::<u64>);
        exact(Some(Some(3_u16)));
        exact(serde_json::json!({"a": [1, "b"]}));
        exact(Json(vec![String::from("x")]));
    }

    #[test]
    fn owned_decoding_takes_the_buffer_over() {
        let buf = Zeroizing::new(b"Ada".to_vec());
        let ptr = buf.as_ptr();
        let s = String::decode_owned(buf).expect("utf8");
        assert_eq!((s.as_str(), s.as_ptr()), ("Ada", ptr), "no copy");
        let buf = Zeroizing::new(vec![1u8, 2]);
        let ptr = buf.as_ptr();
        let v = Vec::<u8>::decode_owned(buf).expect("bytes");
        assert_eq!(v.as_ptr(), ptr);
        is_codec_err(String::decode_owned(Zeroizing::new(vec![b'a', 0xff])));
        assert_eq!(
            i16::decode_owned(Zeroizing::new(vec![0, 5])).expect("i16"),
            5
        );
    }

    #[test]
    fn codec_errors_do_not_contain_plaintext() {
        let secret = br#"{"ssn": "123-45-6789"}"#;
        let err = Json::<Vec<u32>>::decode(secret).expect_err("type mismatch");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("123-45"), "{text}");
        let err = String::decode(b"secret\xff").expect_err("utf8");
        assert!(!format!("{err} {err:?}").contains("secret"));
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuid_codec() {
        let u = uuid::Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        assert_eq!(enc(&u), (1..=16).collect::<Vec<u8>>());
        round(uuid::Uuid::now_v7());
        is_codec_err(uuid::Uuid::decode(&[0; 15]));
    }

    #[cfg(feature = "chrono")]
    #[test]
    fn chrono_codecs() {
        use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
        let d = NaiveDate::from_ymd_opt(1970, 1, 2).expect("date");
        assert_eq!(enc(&d), [0, 0, 0, 1]);
        let d = NaiveDate::from_ymd_opt(1969, 12, 31).expect("date");
        assert_eq!(enc(&d), [0xff, 0xff, 0xff, 0xff]);
        let t = NaiveTime::from_hms_nano_opt(0, 1, 2, 3).expect("time");
        assert_eq!(enc(&t), [0, 0, 0, 62, 0, 0, 0, 3]);
        let dt = DateTime::<Utc>::from_timestamp(256, 1).expect("instant");
        assert_eq!(enc(&dt), [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
        assert_eq!(enc(&dt.naive_utc()), enc(&dt));
        round(NaiveDate::from_ymd_opt(1815, 12, 10).expect("date"));
        round(NaiveDate::MIN);
        round(NaiveDate::MAX);
        round(NaiveTime::from_hms_nano_opt(23, 59, 59, 1_999_999_999).expect("leap second"));
        round(Utc::now());
        round(Utc::now().naive_utc());
        is_codec_err(NaiveDate::decode(&[0x7f, 0xff, 0xff, 0xff]));
        is_codec_err(NaiveDate::decode(&[0, 0]));
        is_codec_err(NaiveTime::decode(&[0, 1, 0x51, 0x80, 0, 0, 0, 0]));
        is_codec_err(DateTime::<Utc>::decode(&[
            0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ]));
        is_codec_err(DateTime::<Utc>::decode(&[0; 11]));
    }

    #[cfg(feature = "time")]
    #[test]
    fn time_codecs() {
        use time::macros::{date, datetime, time};
        assert_eq!(enc(&date!(1970 - 01 - 02)), [0, 0, 0, 1]);
        assert_eq!(enc(&time!(0:01:02.000000003)), [0, 0, 0, 62, 0, 0, 0, 3]);
        let pdt = datetime!(1970-01-01 0:04:16.000000001);
        assert_eq!(enc(&pdt), [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
        let odt = datetime!(1970-01-01 1:04:16 +1);
        assert_eq!(
            enc(&odt),
            [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0x10]
        );
        round(date!(1815 - 12 - 10));
        round(time!(23:59:59.999999999));
        round(pdt);
        round(odt);
        assert_eq!(
            OffsetDateTime::decode(&enc(&odt)).expect("decode").offset(),
            odt.offset()
        );
        round(OffsetDateTime::now_utc());
        is_codec_err(Date::decode(&[0x7f, 0xff, 0xff, 0xff]));
        is_codec_err(Time::decode(&[0, 1, 0x51, 0x80, 0, 0, 0, 0]));
        is_codec_err(Time::decode(&[0, 0, 0, 0, 0x3b, 0x9a, 0xca, 0]));
        is_codec_err(PrimitiveDateTime::decode(&[
            0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ]));
        is_codec_err(OffsetDateTime::decode(&[0; 12]));
        is_codec_err(OffsetDateTime::decode(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0, 0, 0,
        ]));
        use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};
    }

    #[cfg(all(feature = "time", feature = "chrono"))]
    #[test]
    fn chrono_and_time_agree() {
        use time::macros::{date, datetime};
        let c = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).expect("date");
        assert_eq!(enc(&c), enc(&date!(2024 - 02 - 29)));
        let c = chrono::NaiveDate::from_ymd_opt(2024, 2, 29)
            .and_then(|d| d.and_hms_nano_opt(13, 14, 15, 16))
            .expect("datetime");
        assert_eq!(enc(&c), enc(&datetime!(2024-02-29 13:14:15.000000016)));
    }
}
