//! Typed values against Postgres's own output, and property tests of the text forms.

use proptest::prelude::*;

use super::*;

/// Every scalar and array OID that `Value` decodes, plus one it does not.
const ALL_OIDS: [u32; 47] = [
    oid::BOOL,
    oid::BYTEA,
    oid::CHAR,
    oid::NAME,
    oid::INT8,
    oid::INT2,
    oid::INT4,
    oid::TEXT,
    oid::OID,
    oid::JSON,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::BPCHAR,
    oid::VARCHAR,
    oid::DATE,
    oid::TIME,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::INTERVAL,
    oid::TIMETZ,
    oid::NUMERIC,
    oid::UUID,
    oid::JSONB,
    oid::BOOL_ARRAY,
    oid::BYTEA_ARRAY,
    oid::CHAR_ARRAY,
    oid::NAME_ARRAY,
    oid::INT2_ARRAY,
    oid::INT4_ARRAY,
    oid::TEXT_ARRAY,
    oid::BPCHAR_ARRAY,
    oid::VARCHAR_ARRAY,
    oid::INT8_ARRAY,
    oid::FLOAT4_ARRAY,
    oid::FLOAT8_ARRAY,
    oid::OID_ARRAY,
    oid::TIMESTAMP_ARRAY,
    oid::DATE_ARRAY,
    oid::TIME_ARRAY,
    oid::TIMESTAMPTZ_ARRAY,
    oid::INTERVAL_ARRAY,
    oid::NUMERIC_ARRAY,
    oid::TIMETZ_ARRAY,
    oid::UUID_ARRAY,
    oid::JSON_ARRAY,
    oid::JSONB_ARRAY,
    16_385,
];

/// `oid<TAB>text<TAB>send-hex` rows printed by Postgres 15 (see `testdata/pg15_values.sql`).
const PG15_VALUES: &str = include_str!("testdata/pg15_values.tsv");

/// Undoes COPY text-format escaping.
fn copy_unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\x08'),
            Some('f') => out.push('\x0c'),
            Some('v') => out.push('\x0b'),
            Some(other) => out.push(other),
            None => panic!("dangling backslash in {field:?}"),
        }
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn pg15_rows() -> impl Iterator<Item = (u32, String, Vec<u8>)> {
    PG15_VALUES.lines().map(|line| {
        let mut fields = line.split('\t');
        let oid = fields.next().unwrap().parse().unwrap();
        let text = copy_unescape(fields.next().unwrap());
        let send = unhex(fields.next().unwrap());
        (oid, text, send)
    })
}

fn json_of(v: &Value) -> serde_json::Value {
    let mut out = Vec::new();
    v.write_json(&mut out);
    serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "invalid JSON {:?} for {v:?}: {e}",
            String::from_utf8_lossy(&out)
        )
    })
}

#[test]
fn display_reproduces_postgres_text_for_every_sampled_value() {
    let mut checked = 0;
    for (oid, text, _) in pg15_rows() {
        let v = Value::from_text(oid, text.as_bytes())
            .unwrap_or_else(|e| panic!("oid {oid}: {text:?} rejected: {e}"));
        assert!(!matches!(v, Value::Other { .. }), "oid {oid} not typed");
        assert_eq!(v.to_string(), text, "oid {oid}: {v:?}");
        checked += 1;
    }
    assert!(checked > 2000, "only {checked} rows");
}

#[test]
fn binary_form_decodes_to_the_same_text() {
    for (oid, text, send) in pg15_rows() {
        let v = Value::from_binary(oid, &send)
            .unwrap_or_else(|e| panic!("oid {oid}: binary of {text:?} rejected: {e}"));
        assert_eq!(v.to_string(), text, "oid {oid}: {v:?}");
    }
}

#[test]
fn json_is_valid_and_carries_the_text_form() {
    for (oid, text, _) in pg15_rows() {
        let v = Value::from_text(oid, text.as_bytes()).unwrap();
        let mut raw = Vec::new();
        v.write_json(&mut raw);
        match (&v, json_of(&v)) {
            // Numbers are the text form itself (serde_json's own float parsing is not
            // correctly rounded, so compare the bytes, not its reading of them).
            (
                Value::Int2(_)
                | Value::Int4(_)
                | Value::Int8(_)
                | Value::Oid(_)
                | Value::Float4(_)
                | Value::Float8(_),
                serde_json::Value::Number(_),
            ) => assert_eq!(String::from_utf8(raw).unwrap(), text),
            (Value::Float4(_) | Value::Float8(_), serde_json::Value::String(s)) => {
                assert!(["NaN", "Infinity", "-Infinity"].contains(&s.as_str()));
                assert_eq!(s, text);
            }
            (Value::Bool(b), serde_json::Value::Bool(j)) => assert_eq!(*b, j),
            (_, serde_json::Value::String(s)) => assert_eq!(s, text, "oid {oid}"),
            (_, json) => panic!("oid {oid}: unexpected JSON {json} for {v:?}"),
        }
    }
}

#[test]
fn json_escapes_quotes_backslashes_and_controls() {
    let mut out = Vec::new();
    write_json_str(&mut out, "a\"b\\c\nd\te\u{1}f\u{7f}ü😀");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "\"a\\\"b\\\\c\\nd\\te\\u0001f\u{7f}ü😀\""
    );
    let mut out = Vec::new();
    Value::Null.write_json(&mut out);
    Value::Bool(true).write_json(&mut out);
    Value::Float8(f64::NAN).write_json(&mut out);
    Value::Bytea(vec![0xde, 0xad]).write_json(&mut out);
    Value::Array(ArrayValue::parse_text(oid::TEXT, br#"{"a\"b"}"#).unwrap()).write_json(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"nulltrue"NaN""\\xdead""{\"a\\\"b\"}""#
    );
}

#[test]
fn text_conversions_by_type() {
    let t = |oid, s: &str| Value::from_text(oid, s.as_bytes()).unwrap();
    assert_eq!(t(oid::BOOL, "t"), Value::Bool(true));
    assert_eq!(t(oid::BOOL, "off"), Value::Bool(false));
    assert_eq!(t(oid::INT4, " -42 "), Value::Int4(-42));
    assert_eq!(t(oid::OID, "4294967295"), Value::Oid(u32::MAX));
    assert_eq!(t(oid::BYTEA, "\\x0A ff"), Value::Bytea(vec![0x0a, 0xff]));
    assert_eq!(
        t(oid::BYTEA, "a\\\\b\\001"),
        Value::Bytea(b"a\\b\x01".to_vec())
    );
    let uuid = Value::Uuid([
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ]);
    for form in [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
    ] {
        assert_eq!(t(oid::UUID, form), uuid, "{form}");
    }
    assert_eq!(uuid.to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(
        t(16_385, "happy"),
        Value::Other {
            type_oid: 16_385,
            text: "happy".into()
        }
    );
    for (oid, bad) in [
        (oid::BOOL, "maybe"),
        (oid::INT2, "32768"),
        (oid::INT4, "1.5"),
        (oid::INT8, ""),
        (oid::FLOAT8, "1e400"),
        (oid::BYTEA, "\\x0"),
        (oid::BYTEA, "\\q"),
        (oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"),
        (oid::UUID, "-a0eebc999c0b4ef8bb6d6bb9bd380a11"),
        (oid::TEXT, "\u{fffd}"),
    ] {
        let input: &[u8] = if bad == "\u{fffd}" {
            b"\xff"
        } else {
            bad.as_bytes()
        };
        assert!(Value::from_text(oid, input).is_err(), "{oid}: {bad:?}");
    }
}

#[test]
fn arrays_keep_bounds_nulls_and_nesting() {
    let a = |s: &str| match Value::from_text(oid::INT4_ARRAY, s.as_bytes()).unwrap() {
        Value::Array(a) => a,
        other => panic!("{other:?}"),
    };
    let v = a("[0:2]={1,NULL,3}");
    assert_eq!(v.dims, vec![(0, 3)]);
    assert_eq!(
        v.elements,
        vec![Value::Int4(1), Value::Null, Value::Int4(3)]
    );
    let v = a(" { { 1 , 2 } , { 3 , 4 } } ");
    assert_eq!(v.dims, vec![(1, 2), (1, 2)]);
    assert_eq!(v.to_string(), "{{1,2},{3,4}}");
    assert_eq!(a("{}").ndim(), 0);
    for bad in [
        "",
        "{",
        "{1,}",
        "{1,,2}",
        "{{1},2}",
        "{1,{2}}",
        "{{1},{2,3}}",
        "[1:2]={1}",
        "{1}x",
        "{{}}",
        "{\"1}",
        "{{{{{{{1}}}}}}}",
        "{a}",
    ] {
        assert!(
            Value::from_text(oid::INT4_ARRAY, bad.as_bytes()).is_err(),
            "{bad:?}"
        );
    }
    let texts = match Value::from_text(oid::TEXT_ARRAY, br#"{ a b ,"c\"d",\NULL,NULL,"NULL",e\ }"#)
        .unwrap()
    {
        Value::Array(a) => a.elements,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        texts,
        vec![
            Value::Text("a b".into()),
            Value::Text("c\"d".into()),
            Value::Text("NULL".into()),
            Value::Null,
            Value::Text("NULL".into()),
            Value::Text("e ".into()),
        ]
    );
}

#[test]
fn hand_built_array_with_wrong_dims_prints_its_elements() {
    let a = ArrayValue {
        element_type: oid::INT4,
        dims: vec![(1, usize::MAX)],
        elements: vec![Value::Int4(1), Value::Int4(2)],
    };
    assert_eq!(a.to_string(), "{1,2}");
}

#[test]
fn binary_conversions_by_type() {
    let b = |oid, bytes: &[u8]| Value::from_binary(oid, bytes).unwrap();
    assert_eq!(b(oid::CHAR, &[0xc8]), Value::Text("\\310".into()));
    assert_eq!(b(oid::CHAR, &[0]), Value::Text(String::new()));
    assert_eq!(
        b(oid::DATE, &i32::MAX.to_be_bytes()),
        Value::Date(PgDate::Infinity)
    );
    assert_eq!(
        b(oid::TIMESTAMPTZ, &i64::MIN.to_be_bytes()),
        Value::TimestampTz(PgTimestamp::NegInfinity)
    );
    assert_eq!(
        b(16_385, &[1, 2]),
        Value::Binary {
            type_oid: 16_385,
            bytes: vec![1, 2]
        }
    );
    assert_eq!(b(16_385, &[1, 0xab]).to_string(), "\\x01ab");
    for (oid, bad) in [
        (oid::INT4, &[0u8, 0, 1][..]),
        (oid::BOOL, &[][..]),
        (oid::TIME, &(86_400_000_001_i64).to_be_bytes()[..]),
        (oid::TIMESTAMP, &(i64::MAX - 1).to_be_bytes()[..]),
        (oid::JSONB, &[2, b'1'][..]),
        (oid::TEXT, &[0xff][..]),
        (oid::INT4_ARRAY, &[0, 0, 0, 1][..]),
    ] {
        assert!(Value::from_binary(oid, bad).is_err(), "{oid}: {bad:?}");
    }
    // An int4[] claiming 2^31 elements in a handful of bytes fails before allocating.
    let mut huge = Vec::new();
    for v in [1, 0, oid::INT4 as i32, i32::MAX, 1] {
        huge.extend_from_slice(&v.to_be_bytes());
    }
    assert!(Value::from_binary(oid::INT4_ARRAY, &huge).is_err());
}

#[test]
fn from_tuple_maps_null_and_unchanged_toast() {
    use bytes::Bytes;
    assert_eq!(
        Value::from_tuple(oid::INT4, &TupleValue::Null),
        Ok(Some(Value::Null))
    );
    assert_eq!(
        Value::from_tuple(oid::INT4, &TupleValue::UnchangedToast),
        Ok(None)
    );
    assert_eq!(
        Value::from_tuple(oid::INT4, &TupleValue::Text(Bytes::from_static(b"7"))),
        Ok(Some(Value::Int4(7)))
    );
    assert_eq!(
        Value::from_tuple(
            oid::INT4,
            &TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 7]))
        ),
        Ok(Some(Value::Int4(7)))
    );
}

#[test]
fn value_error_names_type_reason_and_truncated_input() {
    let e = Value::from_text(oid::INT4, b"abc").unwrap_err();
    assert_eq!(e.to_string(), r#"invalid int4 value "abc": not an integer"#);
    let long = "x".repeat(100);
    let e = Value::from_text(oid::DATE_ARRAY, long.as_bytes()).unwrap_err();
    assert_eq!(e.text.chars().count(), 65);
    assert!(e.to_string().starts_with("invalid date[] value"));
    let e = Value::from_binary(16_385, &[])
        .map(|_| ())
        .and(Value::from_binary(oid::INT8, &[1; 40]));
    let e = e.unwrap_err();
    assert_eq!(e.text, format!("\\x{}…", "01".repeat(32)));
    assert_eq!(
        oid::array_element(oid::array_of(oid::UUID).unwrap()),
        Some(oid::UUID)
    );
}

// ---- property tests ----

/// A canonical `numeric` text: no leading zeros, any scale, no negative zero.
fn numeric_text() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        "[1-9][0-9]{0,30}|0",
        proptest::option::of("[0-9]{1,30}"),
    )
        .prop_map(|(neg, int, frac)| {
            let mut s = int;
            if let Some(f) = frac {
                s.push('.');
                s.push_str(&f);
            }
            let zero = s.bytes().all(|b| b == b'0' || b == b'.');
            if neg && !zero { format!("-{s}") } else { s }
        })
}

/// Days within Postgres's date range.
fn pg_days() -> impl Strategy<Value = i32> {
    -2_451_545..=2_145_031_948_i32
}

fn pg_micros() -> impl Strategy<Value = i64> {
    -211_813_488_000_000_000..9_223_371_331_200_000_000_i64
}

fn interval() -> impl Strategy<Value = Interval> {
    (any::<i32>(), any::<i32>(), any::<i64>())
        .prop_map(|(months, days, microseconds)| Interval {
            months,
            days,
            microseconds,
        })
        .prop_filter("not a sentinel", |i| {
            *i != Interval::INFINITY && *i != Interval::NEG_INFINITY
        })
}

/// Scalar values of the types arrays are tested with, with their element OIDs.
fn element(oid: u32) -> BoxedStrategy<Value> {
    match oid {
        oid::TEXT => ".*".prop_map(Value::Text).boxed(),
        oid::INT8 => any::<i64>().prop_map(Value::Int8).boxed(),
        oid::FLOAT8 => any::<f64>()
            .prop_filter("NaN never equals", |f| !f.is_nan())
            .prop_map(Value::Float8)
            .boxed(),
        oid::NUMERIC => numeric_text()
            .prop_map(|s| Value::Numeric(Numeric::parse(&s).unwrap()))
            .boxed(),
        oid::TIMESTAMPTZ => pg_micros()
            .prop_map(|us| Value::TimestampTz(PgTimestamp::Micros(us)))
            .boxed(),
        oid::INTERVAL => interval().prop_map(Value::Interval).boxed(),
        oid::BYTEA => proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(Value::Bytea)
            .boxed(),
        _ => any::<[u8; 16]>().prop_map(Value::Uuid).boxed(),
    }
}

/// Arrays of 1 to 3 dimensions with NULLs and arbitrary lower bounds.
fn array() -> impl Strategy<Value = ArrayValue> {
    let oids = prop_oneof![
        Just(oid::TEXT),
        Just(oid::INT8),
        Just(oid::FLOAT8),
        Just(oid::NUMERIC),
        Just(oid::TIMESTAMPTZ),
        Just(oid::INTERVAL),
        Just(oid::BYTEA),
        Just(oid::UUID),
    ];
    (
        oids,
        proptest::collection::vec((-5..5i32, 1..4usize), 1..=3),
    )
        .prop_flat_map(|(elem, dims)| {
            let total = dims.iter().map(|(_, n)| n).product::<usize>();
            let value = prop_oneof![1 => Just(Value::Null), 4 => element(elem)];
            proptest::collection::vec(value, total).prop_map(move |elements| ArrayValue {
                element_type: elem,
                dims: dims.clone(),
                elements,
            })
        })
}

fn round_trip(oid: u32, v: &Value) -> Result<(), TestCaseError> {
    let text = v.to_string();
    let back =
        Value::from_text(oid, text.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, v, "via {:?}", text);
    prop_assert_eq!(back.to_string(), text);
    Ok(())
}

proptest! {
    #[test]
    fn integers_round_trip(a in any::<i16>(), b in any::<i32>(), c in any::<i64>(), d in any::<u32>()) {
        round_trip(oid::INT2, &Value::Int2(a))?;
        round_trip(oid::INT4, &Value::Int4(b))?;
        round_trip(oid::INT8, &Value::Int8(c))?;
        round_trip(oid::OID, &Value::Oid(d))?;
    }

    #[test]
    fn floats_round_trip_bit_for_bit(bits8 in any::<u64>(), bits4 in any::<u32>()) {
        let f8 = f64::from_bits(bits8);
        let f4 = f32::from_bits(bits4);
        let back8 = Value::from_text(oid::FLOAT8, Value::Float8(f8).to_string().as_bytes()).unwrap();
        let back4 = Value::from_text(oid::FLOAT4, Value::Float4(f4).to_string().as_bytes()).unwrap();
        match (back8, back4) {
            (Value::Float8(b8), Value::Float4(b4)) => {
                prop_assert!(b8.to_bits() == bits8 || (f8.is_nan() && b8.is_nan()));
                prop_assert!(b4.to_bits() == bits4 || (f4.is_nan() && b4.is_nan()));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn numerics_keep_their_exact_text(s in numeric_text()) {
        round_trip(oid::NUMERIC, &Value::Numeric(Numeric::parse(&s).unwrap()))?;
        let n = Numeric::parse(&s).unwrap();
        prop_assert_eq!(n.as_str(), s.as_str());
    }

    #[test]
    fn dates_and_times_round_trip(
        days in pg_days(),
        us in pg_micros(),
        tod in 0..=86_400_000_000_i64,
        offset in -57_599..=57_599_i32,
    ) {
        round_trip(oid::DATE, &Value::Date(PgDate::Days(days)))?;
        round_trip(oid::TIMESTAMP, &Value::Timestamp(PgTimestamp::Micros(us)))?;
        round_trip(oid::TIMESTAMPTZ, &Value::TimestampTz(PgTimestamp::Micros(us)))?;
        let time = PgTime::from_micros(tod).unwrap();
        round_trip(oid::TIME, &Value::Time(time))?;
        round_trip(oid::TIMETZ, &Value::TimeTz(TimeTz { time, offset_seconds: offset }))?;
    }

    #[test]
    fn intervals_round_trip(i in interval()) {
        round_trip(oid::INTERVAL, &Value::Interval(i))?;
    }

    #[test]
    fn uuids_and_bytea_round_trip(u in any::<[u8; 16]>(), b in proptest::collection::vec(any::<u8>(), 0..64)) {
        round_trip(oid::UUID, &Value::Uuid(u))?;
        round_trip(oid::BYTEA, &Value::Bytea(b))?;
    }

    #[test]
    fn arrays_round_trip(a in array()) {
        let array_oid = oid::array_of(a.element_type).unwrap();
        round_trip(array_oid, &Value::Array(a))?;
    }

    #[test]
    fn json_output_is_valid_json(a in array(), s in ".*") {
        let v = Value::Array(a);
        prop_assert_eq!(json_of(&v), serde_json::Value::String(v.to_string()));
        let t = Value::Text(s.clone());
        prop_assert_eq!(json_of(&t), serde_json::Value::String(s));
    }

    #[test]
    fn from_text_never_panics(oid in proptest::sample::select(&ALL_OIDS[..]), bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
        let _ = Value::from_text(oid, &bytes);
    }

    #[test]
    fn from_text_never_panics_on_near_valid_text(
        oid in proptest::sample::select(&ALL_OIDS[..]),
        s in r#"[-+0-9:. eE\[\]{}",\\NULBCinfty]{0,40}"#,
    ) {
        if let Ok(v) = Value::from_text(oid, s.as_bytes()) {
            // Whatever parses must print (and print without panicking).
            let _ = v.to_string();
            let mut out = Vec::new();
            v.write_json(&mut out);
        }
    }

    #[test]
    fn from_binary_never_panics(oid in proptest::sample::select(&ALL_OIDS[..]), bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
        if let Ok(v) = Value::from_binary(oid, &bytes) {
            let _ = v.to_string();
        }
    }

    #[test]
    fn binary_arrays_never_panic(
        ndim in 0..8i32,
        elem in proptest::sample::select(&ALL_OIDS[..23]),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // A plausible header so that decoding gets past it into dimensions and elements.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ndim.to_be_bytes());
        bytes.extend_from_slice(&0i32.to_be_bytes());
        bytes.extend_from_slice(&elem.to_be_bytes());
        bytes.extend_from_slice(&tail);
        if let Ok(v) = Value::from_binary(oid::array_of(elem).unwrap(), &bytes) {
            let _ = v.to_string();
        }
    }
}
