//! Plaintext columns as jobs read and write them.
//!
//! A backfill must seal each existing value exactly as the model would have
//! sealed it, or the row would not open through the model: a `date` column
//! becomes the model's 4-byte day number, a JSON column its compact JSON, a
//! padded field its padded frame. So a job carries a [`ValueCodec`]: raw (text
//! as its UTF-8 bytes, binary as is, what the value API seals), a model
//! column's own codec and frame ([`super::Target::for_model`]), or a built-in
//! type's codec (`--plaintext-type date` on the command line). Typed columns
//! are read through their text form (`CAST(col AS TEXT)`, which every database
//! renders canonically for dates, numbers, UUIDs and JSON) and parsed into a
//! [`PlainValue`]; decrypt-out renders the value as text the database casts
//! back into the column's type. Verification compares typed values, not
//! strings, so `1.50` and `1.5` or two spellings of one JSON object agree.

use zeroize::Zeroizing;

use super::db::Dialect;
use crate::error::{Error, Result};
use crate::model::{CodecId, EncryptedColumn, Framing, PlainBuf, PlainValue};

/// How a job turns plaintext column values into the bytes it seals, and back.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ValueCodec {
    /// As the value API seals: text as its UTF-8 bytes, binary as is.
    Raw,
    /// A model column's own codec and frame (padding, hidden NULL), from
    /// [`super::Target::for_model`].
    Model(&'static EncryptedColumn),
    /// A built-in type's encoding in a frame: what a model field of that type
    /// (with those options) stores, e.g. `--plaintext-type date --pad 16`.
    Builtin {
        /// The type's codec.
        codec: CodecId,
        /// The field's frame.
        framing: Framing,
    },
}

impl PartialEq for ValueCodec {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ValueCodec::Raw, ValueCodec::Raw) => true,
            (ValueCodec::Model(a), ValueCodec::Model(b)) => std::ptr::eq(*a, *b),
            (
                ValueCodec::Builtin { codec, framing },
                ValueCodec::Builtin {
                    codec: c2,
                    framing: f2,
                },
            ) => codec == c2 && framing == f2,
            _ => false,
        }
    }
}

impl Eq for ValueCodec {}

impl ValueCodec {
    /// The built-in codec of type name `name` (`date`, `i64`, `json`, ... as
    /// [`CodecId::parse`] reads them), with padding `pad` (0: none) and no
    /// hidden NULL.
    pub fn builtin(name: &str, pad: usize) -> Result<Self> {
        let codec = CodecId::parse(name)?;
        Ok(ValueCodec::Builtin {
            codec,
            framing: Framing {
                hide_null: false,
                fixed_len: codec.fixed_len(),
                pad,
            },
        })
    }

    /// Whether both seal every value into the same bytes: the same codec in
    /// the same frame (a model column's own codec and `--plaintext-type` with
    /// its `--pad` agree when they say the same). A custom `FieldCodec` agrees
    /// only with its own column.
    pub fn same_encoding(&self, other: &Self) -> bool {
        let parts = |c: &Self| match c {
            ValueCodec::Raw => None,
            ValueCodec::Model(c) if c.codec == CodecId::Custom => None,
            ValueCodec::Model(c) => Some((c.codec, c.framing())),
            ValueCodec::Builtin { codec, framing } => Some((*codec, *framing)),
        };
        self == other || parts(self).is_some_and(|p| Some(p) == parts(other))
    }

    /// The codec, unless raw.
    pub fn codec(&self) -> Option<CodecId> {
        match self {
            ValueCodec::Raw => None,
            ValueCodec::Model(c) => Some(c.codec),
            ValueCodec::Builtin { codec, .. } => Some(*codec),
        }
    }

    /// A short name for job descriptions.
    pub(crate) fn describe(&self) -> Option<String> {
        match self {
            ValueCodec::Raw => None,
            ValueCodec::Model(c) => Some(format!("model:{}", c.codec)),
            ValueCodec::Builtin { codec, framing } => Some(format!("{codec}/pad={}", framing.pad)),
        }
    }

    /// Whether a typed codec reads the column through its text form (every
    /// codec but text and bytes).
    pub(crate) fn reads_text_form(&self) -> bool {
        !matches!(
            self.codec(),
            None | Some(CodecId::Text) | Some(CodecId::Bytes)
        )
    }

    /// The framed plaintext of `v`, exactly as the model frames it.
    pub(crate) fn encode(&self, v: &PlainValue) -> Result<Option<PlainBuf>> {
        match self {
            ValueCodec::Raw => Err(Error::Config("a raw codec has no typed encoding".into())),
            ValueCodec::Model(c) => c.encode_stored(v),
            ValueCodec::Builtin { codec, framing } => match v {
                PlainValue::Null if framing.hide_null => Ok(Some(framing.hidden_null())),
                PlainValue::Null => Ok(None),
                v => {
                    let mut buf = framing.value(v.size_hint());
                    crate::model::plain::encode_plain(*codec, v, buf.out())?;
                    framing.finish(&mut buf);
                    Ok(Some(buf))
                }
            },
        }
    }

    /// The value of a decrypted frame (inverse of [`ValueCodec::encode`]).
    pub(crate) fn decode(&self, plain: Zeroizing<Vec<u8>>) -> Result<PlainValue> {
        match self {
            ValueCodec::Raw => Err(Error::Config("a raw codec has no typed decoding".into())),
            ValueCodec::Model(c) => c.decode_stored(plain),
            ValueCodec::Builtin { codec, framing } => match framing.unframe(plain)? {
                None => Ok(PlainValue::Null),
                Some(b) => crate::model::plain::decode_plain(*codec, &b),
            },
        }
    }
}

/// The expression reading plaintext column `col` for `codec`: typed columns
/// through their text form.
pub(crate) fn read_expr(d: Dialect, codec: &ValueCodec, col: &str) -> String {
    if !codec.reads_text_form() {
        return col.to_owned();
    }
    match d {
        Dialect::MySql => format!("CAST({col} AS CHAR)"),
        _ => format!("CAST({col} AS TEXT)"),
    }
}

fn bad(codec: CodecId, what: &str) -> Error {
    // The value itself is plaintext: never in an error.
    Error::codec(
        "PlainValue",
        format!("the plaintext column holds a value that is not a valid {codec} ({what})"),
    )
}

/// Parse the text form of a typed column value as `codec`'s type.
pub(crate) fn parse_text(codec: CodecId, s: &str) -> Result<PlainValue> {
    use CodecId as C;
    let t = s.trim();
    Ok(match codec {
        C::Text => PlainValue::Text(Zeroizing::new(s.to_owned())),
        C::Bytes => PlainValue::Bytes(Zeroizing::new(s.as_bytes().to_vec())),
        C::Bool => match t.to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "y" | "yes" | "on" => PlainValue::Bool(true),
            "f" | "false" | "0" | "n" | "no" | "off" => PlainValue::Bool(false),
            _ => return Err(bad(codec, "expected true or false")),
        },
        C::I8 | C::I16 | C::I32 | C::I64 | C::I128 | C::U8 | C::U16 | C::U32 | C::U64 | C::U128 => {
            PlainValue::Int(t.parse().map_err(|_| bad(codec, "expected an integer"))?)
        }
        C::F32 => PlainValue::Float(f64::from(
            parse_float(t).ok_or_else(|| bad(codec, "expected a number"))? as f32,
        )),
        C::F64 => PlainValue::Float(parse_float(t).ok_or_else(|| bad(codec, "expected a number"))?),
        C::Char => {
            let mut cs = s.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) => PlainValue::Char(c),
                _ => return Err(bad(codec, "expected one character")),
            }
        }
        C::Uuid => PlainValue::Uuid(
            super::rowkey::parse_uuid(t).ok_or_else(|| bad(codec, "expected a UUID"))?,
        ),
        C::Date => PlainValue::Date {
            days: parse_date(t).ok_or_else(|| bad(codec, "expected YYYY-MM-DD"))?,
        },
        C::Time => {
            let (secs, nanos) = parse_time(t).ok_or_else(|| bad(codec, "expected HH:MM:SS"))?;
            PlainValue::Time { secs, nanos }
        }
        C::DateTime | C::OffsetDateTime => {
            let (secs, nanos, offset) = parse_datetime(t)
                .ok_or_else(|| bad(codec, "expected YYYY-MM-DD HH:MM:SS[.f][+HH:MM]"))?;
            if codec == C::DateTime {
                PlainValue::DateTime { secs, nanos }
            } else {
                PlainValue::OffsetDateTime {
                    secs,
                    nanos,
                    offset: offset.unwrap_or(0),
                }
            }
        }
        C::Json => PlainValue::Json(
            serde_json::from_str(s).map_err(|_| bad(codec, "expected a JSON document"))?,
        ),
        C::Custom => {
            return Err(Error::Config(
                "a column with its own FieldCodec cannot be backfilled from SQL: seal it from Rust"
                    .into(),
            ));
        }
    })
}

/// The text a database casts back into a typed column (decrypt-out), or the
/// bytes of a binary one. `None` for NULL.
pub(crate) fn render(d: Dialect, v: &PlainValue) -> Option<Rendered> {
    let text = |s: String| Some(Rendered::Text(Zeroizing::new(s)));
    match v {
        PlainValue::Null => None,
        PlainValue::Text(s) => text(s.to_string()),
        PlainValue::Bytes(b) => Some(Rendered::Bytes(b.clone())),
        PlainValue::Bool(b) => text(
            match (d, b) {
                (Dialect::Postgres, true) => "true",
                (Dialect::Postgres, false) => "false",
                (_, true) => "1",
                (_, false) => "0",
            }
            .to_owned(),
        ),
        PlainValue::Int(i) => text(i.to_string()),
        PlainValue::Float(f) if f.is_nan() => text("NaN".to_owned()),
        PlainValue::Float(f) if f.is_infinite() => {
            text(if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned())
        }
        PlainValue::Float(f) => text(format!("{f:?}")),
        PlainValue::Char(c) => text(c.to_string()),
        PlainValue::Uuid(b) => text(super::rowkey::hyphenated(b)),
        PlainValue::Date { days } => text(format_date(*days)),
        PlainValue::Time { secs, nanos } => text(format_time(*secs, *nanos)),
        PlainValue::DateTime { secs, nanos } => text(format_datetime(*secs, *nanos, None)),
        PlainValue::OffsetDateTime {
            secs,
            nanos,
            offset,
        } => text(format_datetime(*secs, *nanos, Some(*offset))),
        PlainValue::Json(j) => text(j.to_string()),
    }
}

/// A decrypted value ready to write into a plaintext column.
pub(crate) enum Rendered {
    Text(Zeroizing<String>),
    Bytes(Zeroizing<Vec<u8>>),
}

fn parse_float(t: &str) -> Option<f64> {
    match t.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "inf" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => t.parse().ok(),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn parse_date(t: &str) -> Option<i32> {
    let mut it = t.splitn(3, '-');
    let (y, m, d) = (num(it.next()?)?, num(it.next()?)?, num(it.next()?)?);
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&d) {
        return None;
    }
    i32::try_from(days_from_civil(y, m, d)).ok()
}

/// `HH:MM:SS[.fraction]` to (seconds since midnight, nanoseconds).
fn parse_time(t: &str) -> Option<(u32, u32)> {
    let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
    let mut it = hms.splitn(3, ':');
    let (h, m, s) = (num(it.next()?)?, num(it.next()?)?, num(it.next()?)?);
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{frac:0<9}").parse().ok()?
    };
    Some((u32::try_from(h * 3600 + m * 60 + s).ok()?, nanos))
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.f][Z|±HH[:MM]]` to (UTC seconds since the epoch,
/// nanoseconds, offset in seconds if given).
fn parse_datetime(t: &str) -> Option<(i64, u32, Option<i32>)> {
    let (date, rest) = t.split_at_checked(10)?;
    let rest = rest.strip_prefix([' ', 'T'])?;
    let days = i64::from(parse_date(date)?);
    let (time, offset) = match rest.find(['+', '-', 'Z']) {
        Some(i) => {
            let (time, off) = rest.split_at(i);
            let offset = if off == "Z" {
                0
            } else {
                let sign = if off.starts_with('-') { -1 } else { 1 };
                let off = &off[1..];
                let (h, m) = match off.split_once(':') {
                    Some((h, m)) => (num(h)?, num(m)?),
                    None if off.len() == 4 => (num(off.get(..2)?)?, num(off.get(2..)?)?),
                    None => (num(off)?, 0),
                };
                if h > 23 || m > 59 {
                    return None;
                }
                sign * i32::try_from(h * 3600 + m * 60).ok()?
            };
            (time.trim(), Some(offset))
        }
        None => (rest.trim(), None),
    };
    let (secs, nanos) = parse_time(time)?;
    let local = days * 86_400 + i64::from(secs);
    Some((local - i64::from(offset.unwrap_or(0)), nanos, offset))
}

/// A value's text as a blind index reads it: what `IndexText` gives the
/// derive for the field's type (text as is; integers, `bool` and `char` in
/// their `Display` form; a UUID hyphenated and lowercase; a date as
/// [`index_date`] spells it). `None` for a kind no index reads (and NULL).
pub(crate) fn index_text(value: &PlainValue) -> Option<Zeroizing<String>> {
    match value {
        PlainValue::Date { days } => Some(Zeroizing::new(index_date(*days))),
        // PostgreSQL's spelling of booleans is `true`/`false`, as `Display`'s.
        PlainValue::Text(_)
        | PlainValue::Int(_)
        | PlainValue::Bool(_)
        | PlainValue::Char(_)
        | PlainValue::Uuid(_) => match render(Dialect::Postgres, value) {
            Some(Rendered::Text(t)) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// A date as a blind index reads it, whoever computes the index: `chrono`'s
/// `%Y-%m-%d` (what `IndexText` for `chrono::NaiveDate` gives the derive), the
/// year zero-padded to four digits and signed outside 0000-9999, so that an
/// index the job fills finds the rows a model writes and the other way round.
fn index_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(i64::from(days));
    match y {
        0..=9999 => format!("{y:04}-{m:02}-{d:02}"),
        10_000.. => format!("+{y}-{m:02}-{d:02}"),
        _ => format!("-{:04}-{m:02}-{d:02}", -y),
    }
}

fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(i64::from(days));
    format!("{y:04}-{m:02}-{d:02}")
}

fn frac(nanos: u32) -> String {
    match nanos {
        0 => String::new(),
        n if n % 1000 == 0 => format!(".{:06}", n / 1000),
        n => format!(".{n:09}"),
    }
}

fn format_time(secs: u32, nanos: u32) -> String {
    format!(
        "{:02}:{:02}:{:02}{}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        frac(nanos)
    )
}

fn format_datetime(secs: i64, nanos: u32, offset: Option<i32>) -> String {
    let local = secs + i64::from(offset.unwrap_or(0));
    let (days, tod) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    let mut s = format!(
        "{} {}",
        format_date(days),
        format_time(u32::try_from(tod).unwrap_or(0), nanos)
    );
    if let Some(off) = offset {
        let sign = if off < 0 { '-' } else { '+' };
        let off = off.unsigned_abs();
        s.push_str(&format!("{sign}{:02}:{:02}", off / 3600, off / 60 % 60));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_match_known_day_numbers() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("1815-12-10"), Some(-56_270));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for days in [-700_000, -56_270, -1, 0, 1, 19_782, 2_932_896] {
            assert_eq!(parse_date(&format_date(days)), Some(days), "{days}");
        }
    }

    #[cfg(feature = "chrono")]
    #[test]
    fn index_dates_are_spelled_as_the_derive_spells_them() {
        use crate::index::IndexText;
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid");
        // Around year 0 (-719,528 is 0000-01-01), year 10,000 (2,932,897 is
        // 10000-01-01) and chrono's limits.
        let days: [i32; 12] = [
            -95_000_000,
            -3_000_000,
            -719_529,
            -719_528,
            -719_162,
            -1,
            0,
            19_782,
            2_932_896,
            2_932_897,
            10_000_000,
            95_000_000,
        ];
        for days in days {
            let offset = chrono::Days::new(u64::from(days.unsigned_abs()));
            let date = if days < 0 {
                epoch - offset
            } else {
                epoch + offset
            };
            assert_eq!(index_date(days), date.index_text(), "{days}");
        }
    }

    #[test]
    fn timestamps_parse_as_postgres_mysql_and_sqlite_render_them() {
        assert_eq!(
            parse_datetime("2024-01-02 03:04:05"),
            Some((1_704_164_645, 0, None))
        );
        assert_eq!(
            parse_datetime("2024-01-02 03:04:05.25+00"),
            Some((1_704_164_645, 250_000_000, Some(0)))
        );
        assert_eq!(
            parse_datetime("2024-01-02T05:04:05+02:00"),
            Some((1_704_164_645, 0, Some(7200)))
        );
        assert_eq!(
            format_datetime(1_704_164_645, 250_000_000, Some(7200)),
            "2024-01-02 05:04:05.250000+02:00"
        );
        assert_eq!(parse_time("23:59:60.5"), Some((86_400, 500_000_000)));
        assert_eq!(parse_time("24:00:00"), None);
        // Malformed offsets are not timestamps (a failed row), never a panic:
        // a multi-byte character where two digits belong, an absurd hour.
        assert_eq!(parse_datetime("2024-01-01 10:00:00+\u{20ac}1"), None);
        assert_eq!(
            parse_datetime("2024-01-01 10:00:00+99999999999999999"),
            None
        );
        assert_eq!(parse_datetime("2024-01-01 10:00:00+0160"), None);
    }

    #[test]
    fn typed_values_parse_as_the_model_encodes_them() {
        assert_eq!(
            parse_text(CodecId::F32, "0.1").unwrap(),
            PlainValue::Float(f64::from(0.1f32))
        );
        assert_eq!(
            parse_text(CodecId::Bool, "t").unwrap(),
            PlainValue::Bool(true)
        );
        assert_eq!(
            parse_text(CodecId::Json, r#"{"b": 1, "a": [true]}"#).unwrap(),
            parse_text(CodecId::Json, r#"{"a":[true],"b":1}"#).unwrap()
        );
        let err = parse_text(CodecId::I32, "secret-value").unwrap_err();
        assert!(!err.to_string().contains("secret-value"), "{err}");
        let codec = ValueCodec::builtin("date", 16).unwrap();
        let v = parse_text(CodecId::Date, "1815-12-10").unwrap();
        let buf = codec.encode(&v).unwrap().expect("not NULL");
        assert_eq!(buf.bytes().len(), 16);
        assert_eq!(codec.decode(buf.into_inner()).unwrap(), v);
    }
}
