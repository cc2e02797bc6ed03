//! Typed column values: a column's type OID plus its text (or binary) form in, a
//! [`Value`] out, and back to the exact Postgres text form by `Display`.
//!
//! The text forms parsed are those Postgres prints under the session settings the stream
//! pins: `DateStyle=ISO`, `IntervalStyle=postgres`, `TimeZone=UTC`,
//! `extra_float_digits=3`. `Display` reproduces them byte for byte, so for every text `t`
//! that Postgres produces, `Value::from_text(oid, t)?.to_string() == t` (what end-to-end
//! tests compare against `col::text`).
//!
//! Types not decoded by OID (enums, domains, composites, ranges, extension types) stay
//! [`Value::Other`] with their text form, or [`Value::Binary`] when sent in binary form.
//! `numeric` stays exact ([`Numeric`]), never a float.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod array;
mod datetime;
mod float;
mod numeric;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt::{self, Write as _};

pub use array::ArrayValue;
pub use datetime::{Interval, PgDate, PgTime, PgTimestamp, TimeTz};
pub use numeric::Numeric;

use super::messages::TupleValue;

/// OIDs of the builtin types that [`Value`] decodes (`pg_type.oid`, fixed across versions).
pub mod oid {
    /// `bool`.
    pub const BOOL: u32 = 16;
    /// `bytea`.
    pub const BYTEA: u32 = 17;
    /// `"char"` (the one-byte internal type).
    pub const CHAR: u32 = 18;
    /// `name`.
    pub const NAME: u32 = 19;
    /// `int8` / `bigint`.
    pub const INT8: u32 = 20;
    /// `int2` / `smallint`.
    pub const INT2: u32 = 21;
    /// `int4` / `integer`.
    pub const INT4: u32 = 23;
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `oid`.
    pub const OID: u32 = 26;
    /// `json`.
    pub const JSON: u32 = 114;
    /// `float4` / `real`.
    pub const FLOAT4: u32 = 700;
    /// `float8` / `double precision`.
    pub const FLOAT8: u32 = 701;
    /// `bpchar` / `char(n)`.
    pub const BPCHAR: u32 = 1042;
    /// `varchar`.
    pub const VARCHAR: u32 = 1043;
    /// `date`.
    pub const DATE: u32 = 1082;
    /// `time`.
    pub const TIME: u32 = 1083;
    /// `timestamp`.
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`.
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `interval`.
    pub const INTERVAL: u32 = 1186;
    /// `timetz`.
    pub const TIMETZ: u32 = 1266;
    /// `numeric`.
    pub const NUMERIC: u32 = 1700;
    /// `uuid`.
    pub const UUID: u32 = 2950;
    /// `jsonb`.
    pub const JSONB: u32 = 3802;

    /// `bool[]`.
    pub const BOOL_ARRAY: u32 = 1000;
    /// `bytea[]`.
    pub const BYTEA_ARRAY: u32 = 1001;
    /// `"char"[]`.
    pub const CHAR_ARRAY: u32 = 1002;
    /// `name[]`.
    pub const NAME_ARRAY: u32 = 1003;
    /// `int2[]`.
    pub const INT2_ARRAY: u32 = 1005;
    /// `int4[]`.
    pub const INT4_ARRAY: u32 = 1007;
    /// `text[]`.
    pub const TEXT_ARRAY: u32 = 1009;
    /// `bpchar[]`.
    pub const BPCHAR_ARRAY: u32 = 1014;
    /// `varchar[]`.
    pub const VARCHAR_ARRAY: u32 = 1015;
    /// `int8[]`.
    pub const INT8_ARRAY: u32 = 1016;
    /// `float4[]`.
    pub const FLOAT4_ARRAY: u32 = 1021;
    /// `float8[]`.
    pub const FLOAT8_ARRAY: u32 = 1022;
    /// `oid[]`.
    pub const OID_ARRAY: u32 = 1028;
    /// `timestamp[]`.
    pub const TIMESTAMP_ARRAY: u32 = 1115;
    /// `date[]`.
    pub const DATE_ARRAY: u32 = 1182;
    /// `time[]`.
    pub const TIME_ARRAY: u32 = 1183;
    /// `timestamptz[]`.
    pub const TIMESTAMPTZ_ARRAY: u32 = 1185;
    /// `interval[]`.
    pub const INTERVAL_ARRAY: u32 = 1187;
    /// `numeric[]`.
    pub const NUMERIC_ARRAY: u32 = 1231;
    /// `timetz[]`.
    pub const TIMETZ_ARRAY: u32 = 1270;
    /// `uuid[]`.
    pub const UUID_ARRAY: u32 = 2951;
    /// `json[]`.
    pub const JSON_ARRAY: u32 = 199;
    /// `jsonb[]`.
    pub const JSONB_ARRAY: u32 = 3807;

    /// The element type of a known array type.
    pub const fn array_element(array_oid: u32) -> Option<u32> {
        Some(match array_oid {
            BOOL_ARRAY => BOOL,
            BYTEA_ARRAY => BYTEA,
            CHAR_ARRAY => CHAR,
            NAME_ARRAY => NAME,
            INT2_ARRAY => INT2,
            INT4_ARRAY => INT4,
            TEXT_ARRAY => TEXT,
            BPCHAR_ARRAY => BPCHAR,
            VARCHAR_ARRAY => VARCHAR,
            INT8_ARRAY => INT8,
            FLOAT4_ARRAY => FLOAT4,
            FLOAT8_ARRAY => FLOAT8,
            OID_ARRAY => OID,
            TIMESTAMP_ARRAY => TIMESTAMP,
            DATE_ARRAY => DATE,
            TIME_ARRAY => TIME,
            TIMESTAMPTZ_ARRAY => TIMESTAMPTZ,
            INTERVAL_ARRAY => INTERVAL,
            NUMERIC_ARRAY => NUMERIC,
            TIMETZ_ARRAY => TIMETZ,
            UUID_ARRAY => UUID,
            JSON_ARRAY => JSON,
            JSONB_ARRAY => JSONB,
            _ => return None,
        })
    }

    /// The array type of a known element type.
    pub const fn array_of(element_oid: u32) -> Option<u32> {
        Some(match element_oid {
            BOOL => BOOL_ARRAY,
            BYTEA => BYTEA_ARRAY,
            CHAR => CHAR_ARRAY,
            NAME => NAME_ARRAY,
            INT2 => INT2_ARRAY,
            INT4 => INT4_ARRAY,
            TEXT => TEXT_ARRAY,
            BPCHAR => BPCHAR_ARRAY,
            VARCHAR => VARCHAR_ARRAY,
            INT8 => INT8_ARRAY,
            FLOAT4 => FLOAT4_ARRAY,
            FLOAT8 => FLOAT8_ARRAY,
            OID => OID_ARRAY,
            TIMESTAMP => TIMESTAMP_ARRAY,
            DATE => DATE_ARRAY,
            TIME => TIME_ARRAY,
            TIMESTAMPTZ => TIMESTAMPTZ_ARRAY,
            INTERVAL => INTERVAL_ARRAY,
            NUMERIC => NUMERIC_ARRAY,
            TIMETZ => TIMETZ_ARRAY,
            UUID => UUID_ARRAY,
            JSON => JSON_ARRAY,
            JSONB => JSONB_ARRAY,
            _ => return None,
        })
    }

    /// The `pg_type.typname` of a known scalar type.
    pub const fn name(oid: u32) -> Option<&'static str> {
        Some(match oid {
            BOOL => "bool",
            BYTEA => "bytea",
            CHAR => "char",
            NAME => "name",
            INT8 => "int8",
            INT2 => "int2",
            INT4 => "int4",
            TEXT => "text",
            OID => "oid",
            JSON => "json",
            FLOAT4 => "float4",
            FLOAT8 => "float8",
            BPCHAR => "bpchar",
            VARCHAR => "varchar",
            DATE => "date",
            TIME => "time",
            TIMESTAMP => "timestamp",
            TIMESTAMPTZ => "timestamptz",
            INTERVAL => "interval",
            TIMETZ => "timetz",
            NUMERIC => "numeric",
            UUID => "uuid",
            JSONB => "jsonb",
            _ => return None,
        })
    }
}

/// A column value its type rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {} value {text:?}: {reason}", TypeLabel::of(.type_oid))]
pub struct ValueError {
    /// The column's type OID.
    pub type_oid: u32,
    /// What was wrong.
    pub reason: Cow<'static, str>,
    /// The offending input, truncated to 64 characters (binary input as `\x` hex).
    pub text: String,
}

/// Input excerpts in errors stop after this many characters.
const EXCERPT_CHARS: usize = 64;

impl ValueError {
    /// An error about text input.
    pub(crate) fn text(
        type_oid: u32,
        reason: impl Into<Cow<'static, str>>,
        input: &[u8],
    ) -> ValueError {
        let input = String::from_utf8_lossy(input);
        let text = match input.char_indices().nth(EXCERPT_CHARS) {
            Some((cut, _)) => format!("{}…", input.get(..cut).unwrap_or_default()),
            None => input.into_owned(),
        };
        ValueError {
            type_oid,
            reason: reason.into(),
            text,
        }
    }

    /// An error about binary input.
    pub(crate) fn binary(
        type_oid: u32,
        reason: impl Into<Cow<'static, str>>,
        input: &[u8],
    ) -> ValueError {
        let shown = input.get(..EXCERPT_CHARS / 2).unwrap_or(input);
        let mut text = String::with_capacity(EXCERPT_CHARS + 4);
        text.push_str("\\x");
        let _ = write_hex(&mut text, shown);
        if shown.len() < input.len() {
            text.push('…');
        }
        ValueError {
            type_oid,
            reason: reason.into(),
            text,
        }
    }
}

/// A type named for humans: `int4`, `int4[]`, or `type 16385`.
struct TypeLabel(u32);

impl TypeLabel {
    fn of(oid: &u32) -> TypeLabel {
        TypeLabel(*oid)
    }
}

impl fmt::Display for TypeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (
            oid::name(self.0),
            oid::array_element(self.0).and_then(oid::name),
        ) {
            (Some(name), _) => f.write_str(name),
            (None, Some(elem)) => write!(f, "{elem}[]"),
            (None, None) => write!(f, "type {}", self.0),
        }
    }
}

/// A typed column value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// SQL NULL (`Display`: `NULL`, as inside arrays).
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`.
    Int2(i16),
    /// `int4`.
    Int4(i32),
    /// `int8`.
    Int8(i64),
    /// `oid`.
    Oid(u32),
    /// `float4`.
    Float4(f32),
    /// `float8`.
    Float8(f64),
    /// `numeric`, exact.
    Numeric(Numeric),
    /// `text`, `varchar`, `bpchar` (with its padding), `name`, `"char"`.
    Text(String),
    /// `uuid`.
    Uuid([u8; 16]),
    /// `date`.
    Date(PgDate),
    /// `time`.
    Time(PgTime),
    /// `timetz`.
    TimeTz(TimeTz),
    /// `timestamp`.
    Timestamp(PgTimestamp),
    /// `timestamptz`, in UTC.
    TimestampTz(PgTimestamp),
    /// `interval`.
    Interval(Interval),
    /// `json`, as sent.
    Json(String),
    /// `jsonb`, as Postgres prints it.
    Jsonb(String),
    /// `bytea`.
    Bytea(Vec<u8>),
    /// An array of one of the types above.
    Array(ArrayValue),
    /// A type not decoded by OID (enum, domain, composite, extension…): its text form.
    Other {
        /// The type's OID.
        type_oid: u32,
        /// The value's Postgres text form.
        text: String,
    },
    /// A binary-format value of a type not decoded by OID (`Display`: `\x` hex).
    Binary {
        /// The type's OID.
        type_oid: u32,
        /// The value's binary (send) form.
        bytes: Vec<u8>,
    },
}

impl Value {
    /// Parses the text form of a value of type `type_oid`.
    pub fn from_text(type_oid: u32, text: &[u8]) -> Result<Value, ValueError> {
        let err = |reason: &'static str| ValueError::text(type_oid, reason, text);
        let utf8 = || std::str::from_utf8(text).map_err(|_| err("not valid UTF-8"));
        let string = || utf8().map(str::to_owned);
        Ok(match type_oid {
            oid::BOOL => Value::Bool(parse_bool(text).ok_or_else(|| err("expected t or f"))?),
            oid::INT2 => Value::Int2(parse_int(text).ok_or_else(|| err("not a smallint"))?),
            oid::INT4 => Value::Int4(parse_int(text).ok_or_else(|| err("not an integer"))?),
            oid::INT8 => Value::Int8(parse_int(text).ok_or_else(|| err("not a bigint"))?),
            oid::OID => Value::Oid(parse_int(text).ok_or_else(|| err("not an oid"))?),
            oid::FLOAT4 => Value::Float4(float::parse_f32(utf8()?).map_err(err)?),
            oid::FLOAT8 => Value::Float8(float::parse_f64(utf8()?).map_err(err)?),
            oid::NUMERIC => Value::Numeric(Numeric::parse(utf8()?)?),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR => {
                Value::Text(string()?)
            }
            oid::JSON => Value::Json(string()?),
            oid::JSONB => Value::Jsonb(string()?),
            oid::BYTEA => Value::Bytea(parse_bytea(text).map_err(err)?),
            oid::UUID => Value::Uuid(parse_uuid(text).ok_or_else(|| err("not a UUID"))?),
            oid::DATE => Value::Date(PgDate::parse(utf8()?).map_err(err)?),
            oid::TIME => Value::Time(PgTime::parse(utf8()?).map_err(err)?),
            oid::TIMETZ => Value::TimeTz(TimeTz::parse(utf8()?).map_err(err)?),
            oid::TIMESTAMP => Value::Timestamp(PgTimestamp::parse(utf8()?, false).map_err(err)?),
            oid::TIMESTAMPTZ => Value::TimestampTz(PgTimestamp::parse(utf8()?, true).map_err(err)?),
            oid::INTERVAL => Value::Interval(Interval::parse(utf8()?).map_err(err)?),
            other => match oid::array_element(other) {
                Some(element) => Value::Array(
                    ArrayValue::parse_text(element, text)
                        .map_err(|reason| ValueError::text(type_oid, reason, text))?,
                ),
                None => Value::Other {
                    type_oid,
                    text: string()?,
                },
            },
        })
    }

    /// Parses the binary (send/recv) form of a value of type `type_oid`.
    pub fn from_binary(type_oid: u32, bytes: &[u8]) -> Result<Value, ValueError> {
        let err = |reason: &'static str| ValueError::binary(type_oid, reason, bytes);
        let wrong_len = || err("wrong length for the type");
        let string = || {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| err("not valid UTF-8"))
        };
        Ok(match type_oid {
            oid::BOOL => Value::Bool(u8::from_be_bytes(exact(bytes).ok_or_else(wrong_len)?) != 0),
            oid::INT2 => Value::Int2(i16::from_be_bytes(exact(bytes).ok_or_else(wrong_len)?)),
            oid::INT4 => Value::Int4(i32::from_be_bytes(exact(bytes).ok_or_else(wrong_len)?)),
            oid::INT8 => Value::Int8(i64::from_be_bytes(exact(bytes).ok_or_else(wrong_len)?)),
            oid::OID => Value::Oid(u32::from_be_bytes(exact(bytes).ok_or_else(wrong_len)?)),
            oid::FLOAT4 => Value::Float4(f32::from_be_bytes(exact(bytes).ok_or_else(wrong_len)?)),
            oid::FLOAT8 => Value::Float8(f64::from_be_bytes(exact(bytes).ok_or_else(wrong_len)?)),
            oid::NUMERIC => Value::Numeric(Numeric::from_binary(bytes).map_err(err)?),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Value::Text(string()?),
            oid::CHAR => Value::Text(char_out(u8::from_be_bytes(
                exact(bytes).ok_or_else(wrong_len)?,
            ))),
            oid::JSON => Value::Json(string()?),
            oid::JSONB => match bytes.split_first() {
                Some((1, json)) => Value::Jsonb(
                    std::str::from_utf8(json)
                        .map(str::to_owned)
                        .map_err(|_| err("not valid UTF-8"))?,
                ),
                _ => return Err(err("unsupported jsonb version")),
            },
            oid::BYTEA => Value::Bytea(bytes.to_vec()),
            oid::UUID => Value::Uuid(exact(bytes).ok_or_else(wrong_len)?),
            oid::DATE => Value::Date(PgDate::from_binary(i32::from_be_bytes(
                exact(bytes).ok_or_else(wrong_len)?,
            ))),
            oid::TIME => Value::Time(
                PgTime::from_micros(i64::from_be_bytes(exact(bytes).ok_or_else(wrong_len)?))
                    .ok_or_else(|| err("time of day out of range"))?,
            ),
            oid::TIMETZ => {
                let [t @ .., z0, z1, z2, z3] = exact::<12>(bytes).ok_or_else(wrong_len)?;
                let time = i64::from_be_bytes(t);
                let zone = i32::from_be_bytes([z0, z1, z2, z3]);
                Value::TimeTz(TimeTz::from_binary(time, zone).map_err(err)?)
            }
            oid::TIMESTAMP | oid::TIMESTAMPTZ => {
                let ts = PgTimestamp::from_binary(i64::from_be_bytes(
                    exact(bytes).ok_or_else(wrong_len)?,
                ))
                .map_err(err)?;
                if type_oid == oid::TIMESTAMP {
                    Value::Timestamp(ts)
                } else {
                    Value::TimestampTz(ts)
                }
            }
            oid::INTERVAL => {
                let [t @ .., d0, d1, d2, d3, m0, m1, m2, m3] =
                    exact::<16>(bytes).ok_or_else(wrong_len)?;
                Value::Interval(Interval {
                    microseconds: i64::from_be_bytes(t),
                    days: i32::from_be_bytes([d0, d1, d2, d3]),
                    months: i32::from_be_bytes([m0, m1, m2, m3]),
                })
            }
            other => match oid::array_element(other) {
                Some(element) => Value::Array(
                    ArrayValue::parse_binary(element, bytes)
                        .map_err(|reason| ValueError::binary(type_oid, reason, bytes))?,
                ),
                None => Value::Binary {
                    type_oid,
                    bytes: bytes.to_vec(),
                },
            },
        })
    }

    /// A tuple column as a value of type `type_oid`; `None` for an unchanged TOASTed value.
    pub fn from_tuple(type_oid: u32, value: &TupleValue) -> Result<Option<Value>, ValueError> {
        match value {
            TupleValue::Null => Ok(Some(Value::Null)),
            TupleValue::UnchangedToast => Ok(None),
            TupleValue::Text(text) => Value::from_text(type_oid, text).map(Some),
            TupleValue::Binary(bytes) => Value::from_binary(type_oid, bytes).map(Some),
        }
    }

    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Appends the value as JSON: numbers for integers and finite floats, booleans, `null`,
    /// and otherwise a string of the Postgres text form (non-finite floats included).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail; the fmt::Result is always Ok.
        let _ = match self {
            Value::Null => {
                out.extend_from_slice(b"null");
                Ok(())
            }
            Value::Bool(b) => {
                out.extend_from_slice(if *b { b"true" } else { b"false" });
                Ok(())
            }
            Value::Int2(v) => write!(RawSink(out), "{v}"),
            Value::Int4(v) => write!(RawSink(out), "{v}"),
            Value::Int8(v) => write!(RawSink(out), "{v}"),
            Value::Oid(v) => write!(RawSink(out), "{v}"),
            // Postgres's float text is a valid JSON number and reads back to the same float.
            Value::Float4(v) if v.is_finite() => float::fmt_f32(&mut RawSink(out), *v),
            Value::Float8(v) if v.is_finite() => float::fmt_f64(&mut RawSink(out), *v),
            Value::Text(s) | Value::Json(s) | Value::Jsonb(s) | Value::Other { text: s, .. } => {
                write_json_str(out, s);
                Ok(())
            }
            Value::Numeric(n) => {
                write_json_str(out, n.as_str());
                Ok(())
            }
            // These text forms never contain a character JSON needs escaped.
            Value::Uuid(_)
            | Value::Date(_)
            | Value::Time(_)
            | Value::TimeTz(_)
            | Value::Timestamp(_)
            | Value::TimestampTz(_)
            | Value::Interval(_) => {
                out.push(b'"');
                let r = write!(RawSink(out), "{self}");
                out.push(b'"');
                r
            }
            Value::Bytea(b) | Value::Binary { bytes: b, .. } => {
                // `\x…` in JSON: the backslash is escaped, hex digits need nothing.
                out.extend_from_slice(b"\"\\\\x");
                let r = write_hex(&mut RawSink(out), b);
                out.push(b'"');
                r
            }
            _ => {
                out.push(b'"');
                let r = write!(JsonEscaper(out), "{self}");
                out.push(b'"');
                r
            }
        };
    }
}

impl fmt::Display for Value {
    /// The Postgres text form (`NULL` for SQL NULL).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => f.write_str(if *b { "t" } else { "f" }),
            Value::Int2(v) => write!(f, "{v}"),
            Value::Int4(v) => write!(f, "{v}"),
            Value::Int8(v) => write!(f, "{v}"),
            Value::Oid(v) => write!(f, "{v}"),
            Value::Float4(v) => float::fmt_f32(f, *v),
            Value::Float8(v) => float::fmt_f64(f, *v),
            Value::Numeric(n) => f.write_str(n.as_str()),
            Value::Text(s) | Value::Json(s) | Value::Jsonb(s) | Value::Other { text: s, .. } => {
                f.write_str(s)
            }
            Value::Uuid(u) => write_uuid(f, u),
            Value::Date(d) => write!(f, "{d}"),
            Value::Time(t) => write!(f, "{t}"),
            Value::TimeTz(t) => write!(f, "{t}"),
            Value::Timestamp(t) => write!(f, "{t}"),
            Value::TimestampTz(t) => write!(f, "{}", t.display_utc()),
            Value::Interval(i) => write!(f, "{i}"),
            Value::Bytea(b) | Value::Binary { bytes: b, .. } => {
                f.write_str("\\x")?;
                write_hex(f, b)
            }
            Value::Array(a) => write!(f, "{a}"),
        }
    }
}

/// Appends `s` as a JSON string: quotes, backslashes and control characters escaped
/// (`\n`, `\r`, `\t` short, others as `\u00XX`), everything else as is.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    escape_json(out, s);
    out.push(b'"');
}

fn escape_json(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        if short.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                hex_digit(b >> 4),
                hex_digit(b & 0xf),
            ]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

/// Appends formatted text to a byte buffer as is.
struct RawSink<'a>(&'a mut Vec<u8>);

impl fmt::Write for RawSink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends formatted text to a byte buffer escaped as the inside of a JSON string.
struct JsonEscaper<'a>(&'a mut Vec<u8>);

impl fmt::Write for JsonEscaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_json(self.0, s);
        Ok(())
    }
}

fn hex_digit(n: u8) -> u8 {
    match n {
        0..=9 => b'0' + n,
        _ => b'a' + (n & 0xf) - 10,
    }
}

/// Lowercase hex of `bytes`, in stack-buffered chunks rather than a call per byte.
fn write_hex(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 128];
    for chunk in bytes.chunks(buf.len() / 2) {
        for (pair, &b) in buf.chunks_exact_mut(2).zip(chunk) {
            pair.copy_from_slice(&[hex_digit(b >> 4), hex_digit(b & 0xf)]);
        }
        let hex = buf.get(..chunk.len() * 2).ok_or(fmt::Error)?;
        f.write_str(std::str::from_utf8(hex).map_err(|_| fmt::Error)?)?;
    }
    Ok(())
}

fn write_uuid(f: &mut fmt::Formatter<'_>, u: &[u8; 16]) -> fmt::Result {
    let mut buf = [0u8; 36];
    let mut pos = 0;
    for (i, &b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            if let Some(slot) = buf.get_mut(pos) {
                *slot = b'-';
            }
            pos += 1;
        }
        if let Some(pair) = buf.get_mut(pos..pos + 2) {
            pair.copy_from_slice(&[hex_digit(b >> 4), hex_digit(b & 0xf)]);
        }
        pos += 2;
    }
    f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
}

/// A fixed-capacity ASCII string on the stack, for assembling a short text form (a float's
/// digits, a timestamp) before one `write_str`, instead of many small formatted writes.
pub(super) struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    /// An empty buffer.
    pub(super) fn new() -> Self {
        StackStr {
            buf: [0; N],
            len: 0,
        }
    }

    /// The text so far.
    pub(super) fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// Appends `n` in decimal, zero-padded to at least `width` digits.
    pub(super) fn push_padded(&mut self, mut n: u64, width: usize) -> fmt::Result {
        let mut digits = [b'0'; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            let slot = digits.get_mut(start).ok_or(fmt::Error)?;
            *slot = b'0' + u8::try_from(n % 10).map_err(|_| fmt::Error)?;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for _ in (digits.len() - start)..width {
            self.push_bytes(b"0")?;
        }
        self.push_bytes(digits.get(start..).ok_or(fmt::Error)?)
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> fmt::Result {
        let end = self.len.checked_add(bytes.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes())
    }
}

/// `bytes` as an array of exactly `N` bytes.
fn exact<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// `isspace` as Postgres's integer and boolean input functions skip it around values.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn trim_c_space(text: &[u8]) -> &[u8] {
    let start = text
        .iter()
        .position(|&b| !is_c_space(b))
        .unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|&b| !is_c_space(b))
        .map_or(start, |e| e + 1);
    text.get(start..end).unwrap_or_default()
}

fn parse_int<T: std::str::FromStr>(text: &[u8]) -> Option<T> {
    std::str::from_utf8(trim_c_space(text)).ok()?.parse().ok()
}

/// `boolin`: `t`/`f` as printed, and the other spellings it accepts.
fn parse_bool(text: &[u8]) -> Option<bool> {
    let t = trim_c_space(text);
    const TRUE: [&[u8]; 5] = [b"t", b"true", b"yes", b"on", b"1"];
    const FALSE: [&[u8]; 5] = [b"f", b"false", b"no", b"off", b"0"];
    if TRUE.iter().any(|w| t.eq_ignore_ascii_case(w)) {
        Some(true)
    } else if FALSE.iter().any(|w| t.eq_ignore_ascii_case(w)) {
        Some(false)
    } else {
        None
    }
}

/// `charout`: the byte itself, `\ooo` octal when its high bit is set, empty for NUL.
fn char_out(b: u8) -> String {
    match b {
        0 => String::new(),
        0x80.. => format!("\\{:03o}", b),
        _ => char::from(b).to_string(),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `byteain`: hex format (`\x0aff`, whitespace allowed between byte pairs) or the
/// traditional escape format (`\\` and `\ooo` escapes, other bytes as themselves).
fn parse_bytea(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut it = hex.iter().copied();
        while let Some(b) = it.next() {
            if is_c_space(b) {
                continue;
            }
            let hi = hex_value(b).ok_or("invalid hexadecimal digit")?;
            let lo = it
                .next()
                .and_then(hex_value)
                .ok_or("odd number of hexadecimal digits")?;
            out.push(hi << 4 | lo);
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match rest {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', tail @ ..] => {
                out.push(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'));
                rest = tail;
            }
            _ => return Err("invalid escape sequence"),
        }
    }
    Ok(out)
}

/// `uuid_in`: 32 hex digits, upper or lower case, optionally in braces, with a hyphen
/// allowed after any group of four digits.
fn parse_uuid(text: &[u8]) -> Option<[u8; 16]> {
    let t = text
        .strip_prefix(b"{")
        .and_then(|t| t.strip_suffix(b"}"))
        .unwrap_or(text);
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    let mut after_hyphen = false;
    for &b in t {
        if b == b'-' {
            if nibbles == 0 || !nibbles.is_multiple_of(4) || nibbles >= 32 || after_hyphen {
                return None;
            }
            after_hyphen = true;
            continue;
        }
        after_hyphen = false;
        let v = hex_value(b)?;
        let byte = out.get_mut(nibbles / 2)?;
        *byte |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
        nibbles += 1;
    }
    (nibbles == 32 && !after_hyphen).then_some(out)
}
