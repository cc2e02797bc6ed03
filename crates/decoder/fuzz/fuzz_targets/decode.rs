//! Fuzz target `decode`: arbitrary bytes through the `pgoutput` decoder and typed values.
//!
//! Input: the first byte picks the protocol version (1 to 4); the rest is a sequence of
//! messages, each preceded by a one-byte length. The decoder starts with a relation whose
//! columns cover every type `Value` decodes, so row messages get past the relation cache;
//! inputs may send their own Relation messages (with any type OIDs) and Stream Start /
//! Stop to move the decoder between states. Every tuple value of every decoded row is
//! converted with `Value::from_tuple`, printed and written as JSON. Nothing may panic.

#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgprism_decoder::pgoutput::{Decoder, Message, OldTuple, TupleData, Value, oid};

/// Relation id of the primed relation.
const REL: u32 = 16_384;

/// Column types of the primed relation: each decoded scalar, a few arrays, one unknown.
const COLUMN_TYPES: [u32; 16] = [
    oid::BOOL,
    oid::INT4,
    oid::INT8,
    oid::FLOAT8,
    oid::NUMERIC,
    oid::TEXT,
    oid::BYTEA,
    oid::UUID,
    oid::DATE,
    oid::TIMESTAMPTZ,
    oid::INTERVAL,
    oid::TIMETZ,
    oid::JSONB,
    oid::INT4_ARRAY,
    oid::TEXT_ARRAY,
    16_385,
];

fn primed_relation() -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_u32(REL);
    b.put_slice(b"public\0t\0");
    b.put_u8(b'd');
    b.put_u16(COLUMN_TYPES.len() as u16);
    for (i, type_oid) in COLUMN_TYPES.iter().enumerate() {
        b.put_u8(u8::from(i == 0));
        b.put_slice(format!("c{i}\0").as_bytes());
        b.put_u32(*type_oid);
        b.put_i32(-1);
    }
    b.freeze()
}

fn convert(decoder: &Decoder, rel_id: u32, tuple: &TupleData) {
    let Some(relation) = decoder.relations().get(rel_id) else {
        return;
    };
    let mut json = Vec::new();
    for (column, value) in relation.columns.iter().zip(tuple) {
        if let Ok(Some(v)) = Value::from_tuple(column.type_oid, value) {
            let _ = v.to_string();
            json.clear();
            v.write_json(&mut json);
        }
    }
    let _ = relation.typed_row(tuple);
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let version = u32::from(first % 4) + 1;
    let mut decoder = Decoder::new(version).expect("versions 1 to 4 are supported");
    decoder
        .decode(&primed_relation())
        .expect("the primed relation is well-formed");
    while let Some((&len, tail)) = rest.split_first() {
        let (msg, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        match decoder.decode(&Bytes::copy_from_slice(msg)) {
            Ok(Message::Insert(m)) => convert(&decoder, m.rel_id, &m.new),
            Ok(Message::Update(m)) => {
                if let Some(old) = &m.old {
                    convert(&decoder, m.rel_id, old.data());
                }
                convert(&decoder, m.rel_id, &m.new);
            }
            Ok(Message::Delete(m)) => {
                let (OldTuple::Key(t) | OldTuple::Full(t)) = &m.old;
                convert(&decoder, m.rel_id, t);
            }
            Ok(_) => {}
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
