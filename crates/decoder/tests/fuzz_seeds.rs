//! The seed corpus of the `decode` fuzz target (`crates/decoder/fuzz/corpus/decode`): one
//! well-formed input per kind of message, in the target's input format (a version byte,
//! then messages each preceded by a one-byte length). The seeds are built here, checked to
//! decode without error, and compared with the files; `PGPRISM_WRITE_FUZZ_SEEDS=1`
//! rewrites the files after a change.

use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};
use pgprism_decoder::pgoutput::Decoder;

/// The fuzz target's primed relation id and column types (see `fuzz_targets/decode.rs`).
const REL: u32 = 16_384;
const COLUMNS: usize = 16;

/// A text value for each primed column, in order.
const VALUES: [&str; COLUMNS] = [
    "t",
    "42",
    "9000000000",
    "1e300",
    "-3.14",
    "hé\tw",
    "\\x00ff",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "2024-02-29",
    "2024-01-01 00:00:00+00",
    "1 day 04:05:06",
    "12:00+02",
    "{\"a\":[1]}",
    "{1,NULL}",
    "{\"x y\"}",
    "op",
];

fn tuple(b: &mut BytesMut, values: &[Option<&str>]) {
    b.put_u16(values.len() as u16);
    for v in values {
        match v {
            Some(text) => {
                b.put_u8(b't');
                b.put_u32(text.len() as u32);
                b.put_slice(text.as_bytes());
            }
            None => b.put_u8(b'n'),
        }
    }
}

fn row(nulls_from: usize) -> Vec<Option<&'static str>> {
    VALUES
        .iter()
        .enumerate()
        .map(|(i, v)| (i < nulls_from).then_some(*v))
        .collect()
}

fn begin(xid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'B');
    b.put_u64(0x0100_0000);
    b.put_i64(789_000_000_000_000);
    b.put_u32(xid);
    b.freeze()
}

fn commit() -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'C');
    b.put_u8(0);
    b.put_u64(0x0100_0000);
    b.put_u64(0x0100_0040);
    b.put_i64(789_000_000_000_000);
    b.freeze()
}

fn insert(xid: Option<u32>, nulls_from: usize) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    if let Some(x) = xid {
        b.put_u32(x);
    }
    b.put_u32(REL);
    b.put_u8(b'N');
    tuple(&mut b, &row(nulls_from));
    b.freeze()
}

fn update(with_old: bool) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'U');
    b.put_u32(REL);
    if with_old {
        b.put_u8(b'K');
        let mut key = vec![Some("t")];
        key.extend(std::iter::repeat_n(None, COLUMNS - 1));
        tuple(&mut b, &key);
    }
    b.put_u8(b'N');
    // An unchanged TOAST value ('u') in the new tuple.
    let mut values = row(4);
    values.truncate(COLUMNS);
    b.put_u16(COLUMNS as u16);
    for (i, v) in values.iter().enumerate() {
        match (i, v) {
            (5, _) => b.put_u8(b'u'),
            (_, Some(text)) => {
                b.put_u8(b't');
                b.put_u32(text.len() as u32);
                b.put_slice(text.as_bytes());
            }
            (_, None) => b.put_u8(b'n'),
        }
    }
    b.freeze()
}

fn delete() -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'D');
    b.put_u32(REL);
    b.put_u8(b'K');
    let mut key = vec![Some("f")];
    key.extend(std::iter::repeat_n(None, COLUMNS - 1));
    tuple(&mut b, &key);
    b.freeze()
}

fn truncate() -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'T');
    b.put_u32(1);
    b.put_u8(1);
    b.put_u32(REL);
    b.freeze()
}

fn message(transactional: bool) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'M');
    b.put_u8(u8::from(transactional));
    b.put_u64(0x0100_0010);
    b.put_slice(b"pgprism\0");
    b.put_u32(5);
    b.put_slice(b"hello");
    b.freeze()
}

fn origin() -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'O');
    b.put_u64(0x0100_0000);
    b.put_slice(b"upstream\0");
    b.freeze()
}

fn type_message() -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'Y');
    b.put_u32(16_385);
    b.put_slice(b"public\0mood\0");
    b.freeze()
}

fn relation(id: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_u32(id);
    b.put_slice(b"shop\0orders\0");
    b.put_u8(b'f');
    b.put_u16(2);
    b.put_u8(1);
    b.put_slice(b"id\0");
    b.put_u32(20);
    b.put_i32(-1);
    b.put_u8(0);
    b.put_slice(b"status\0");
    b.put_u32(25);
    b.put_i32(-1);
    b.freeze()
}

fn stream_start(xid: u32, first: bool) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'S');
    b.put_u32(xid);
    b.put_u8(u8::from(first));
    b.freeze()
}

fn stream_stop() -> Bytes {
    Bytes::from_static(b"E")
}

fn stream_commit(xid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'c');
    b.put_u32(xid);
    b.put_u8(0);
    b.put_u64(0x0200_0000);
    b.put_u64(0x0200_0040);
    b.put_i64(789_000_000_000_000);
    b.freeze()
}

fn stream_abort(xid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'A');
    b.put_u32(xid);
    b.put_u32(xid);
    b.freeze()
}

/// Every seed: its file name, protocol version, messages.
fn seeds() -> Vec<(&'static str, u32, Vec<Bytes>)> {
    vec![
        (
            "v1-insert-every-type",
            1,
            vec![begin(700), insert(None, COLUMNS), commit()],
        ),
        (
            "v1-update-delete-truncate",
            1,
            vec![
                begin(701),
                origin(),
                type_message(),
                update(true),
                update(false),
                delete(),
                truncate(),
                insert(None, 3),
                commit(),
            ],
        ),
        (
            "v1-messages-and-relation",
            1,
            vec![
                message(false),
                begin(702),
                message(true),
                relation(16_386),
                commit(),
            ],
        ),
        (
            "v2-streamed-commit",
            2,
            vec![
                stream_start(900, true),
                insert(Some(900), COLUMNS),
                stream_stop(),
                stream_start(900, false),
                insert(Some(900), 2),
                stream_stop(),
                stream_commit(900),
            ],
        ),
        (
            "v2-streamed-abort",
            2,
            vec![
                stream_start(901, true),
                insert(Some(901), 1),
                stream_stop(),
                stream_abort(901),
            ],
        ),
    ]
}

/// The fuzz target's input: version byte (`version - 1`), then length-prefixed messages.
fn input(version: u32, messages: &[Bytes]) -> Vec<u8> {
    let mut out = vec![(version - 1) as u8];
    for m in messages {
        let len = u8::try_from(m.len()).expect("a seed message fits the one-byte length");
        out.push(len);
        out.extend_from_slice(m);
    }
    out
}

fn primed(version: u32) -> Decoder {
    // The same relation the fuzz target primes: REL with COLUMNS columns of the types it
    // lists (the decoder needs only the count and the OIDs here).
    const TYPES: [u32; COLUMNS] = [
        16, 23, 20, 701, 1700, 25, 17, 2950, 1082, 1184, 1186, 1266, 3802, 1007, 1009, 16_385,
    ];
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_u32(REL);
    b.put_slice(b"public\0t\0");
    b.put_u8(b'd');
    b.put_u16(COLUMNS as u16);
    for (i, t) in TYPES.iter().enumerate() {
        b.put_u8(u8::from(i == 0));
        b.put_slice(format!("c{i}\0").as_bytes());
        b.put_u32(*t);
        b.put_i32(-1);
    }
    let mut d = Decoder::new(version).unwrap();
    d.decode(&b.freeze()).unwrap();
    d
}

#[test]
fn seeds_decode_and_match_the_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let write = std::env::var_os("PGPRISM_WRITE_FUZZ_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, version, messages) in seeds() {
        let mut d = primed(version);
        for m in &messages {
            let decoded = d.decode(m);
            assert!(
                decoded.is_ok(),
                "seed {name}: {:?} does not decode: {decoded:?}",
                m.first().map(|b| *b as char)
            );
        }
        let bytes = input(version, &messages);
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with PGPRISM_WRITE_FUZZ_SEEDS=1 to write the corpus",
                path.display()
            )
        });
        assert_eq!(
            on_disk,
            bytes,
            "{} is stale: run with PGPRISM_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
}
