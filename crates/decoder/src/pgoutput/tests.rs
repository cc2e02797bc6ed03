//! Decoder tests: every message of protocol v1–v4 from hand-built wire bytes, malformed
//! input of every kind, and property tests (never panic; encode → decode round trip).

use bytes::Bytes;
use proptest::prelude::*;

use super::encode::encode;
use super::*;
use crate::Lsn;

/// Wire bytes built field by field, written independently of the test encoder.
#[derive(Default, Clone)]
struct Wire(Vec<u8>);

impl Wire {
    fn tag(t: u8) -> Wire {
        Wire(vec![t])
    }
    fn u8(mut self, v: u8) -> Wire {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn str(mut self, s: &str) -> Wire {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, b: &[u8]) -> Wire {
        self.0.extend_from_slice(b);
        self
    }
    /// A `t` column.
    fn text(self, s: &str) -> Wire {
        self.u8(b't').i32(s.len() as i32).raw(s.as_bytes())
    }
    fn bytes(&self) -> Bytes {
        Bytes::from(self.0.clone())
    }
}

const REL: u32 = 16_384;

/// `R` for `public.t (id int4 key, note text, blob bytea)`, optionally with a stream xid.
fn relation_wire(xid: Option<u32>) -> Wire {
    let mut w = Wire::tag(b'R');
    if let Some(x) = xid {
        w = w.u32(x);
    }
    w.u32(REL)
        .str("public")
        .str("t")
        .u8(b'd')
        .i16(3)
        .u8(1)
        .str("id")
        .u32(oid::INT4)
        .i32(-1)
        .u8(0)
        .str("note")
        .u32(oid::TEXT)
        .i32(-1)
        .u8(0)
        .str("blob")
        .u32(oid::BYTEA)
        .i32(-1)
}

fn decoder(version: u32) -> Decoder {
    let mut d = Decoder::new(version).unwrap();
    d.decode(&relation_wire(None).bytes()).unwrap();
    d
}

fn stream_start(xid: u32) -> Bytes {
    Wire::tag(b'S').u32(xid).u8(1).bytes()
}

fn insert_wire(xid: Option<u32>) -> Wire {
    let mut w = Wire::tag(b'I');
    if let Some(x) = xid {
        w = w.u32(x);
    }
    w.u32(REL)
        .u8(b'N')
        .i16(3)
        .text("1")
        .u8(b'n')
        .u8(b'b')
        .i32(2)
        .raw(&[0xde, 0xad])
}

/// One valid message of every kind with the decoder state it needs.
fn valid_messages() -> Vec<(&'static str, u32, bool, Wire)> {
    let lsn = 0x16_B374_D848;
    vec![
        ("begin", 1, false, Wire::tag(b'B').u64(lsn).i64(1).u32(7)),
        (
            "commit",
            1,
            false,
            Wire::tag(b'C').u8(0).u64(lsn).u64(lsn + 8).i64(1),
        ),
        ("origin", 1, false, Wire::tag(b'O').u64(lsn).str("node_a")),
        ("relation", 1, false, relation_wire(None)),
        (
            "type",
            1,
            false,
            Wire::tag(b'Y').u32(16_500).str("public").str("mood"),
        ),
        ("insert", 1, false, insert_wire(None)),
        (
            "update",
            1,
            false,
            Wire::tag(b'U')
                .u32(REL)
                .u8(b'K')
                .i16(3)
                .text("1")
                .u8(b'n')
                .u8(b'n')
                .u8(b'N')
                .i16(3)
                .text("2")
                .u8(b'u')
                .u8(b'n'),
        ),
        (
            "delete",
            1,
            false,
            Wire::tag(b'D')
                .u32(REL)
                .u8(b'O')
                .i16(3)
                .text("1")
                .text("x")
                .u8(b'n'),
        ),
        (
            "truncate",
            1,
            false,
            Wire::tag(b'T').i32(2).u8(3).u32(REL).u32(REL + 1),
        ),
        (
            "message",
            1,
            false,
            Wire::tag(b'M').u8(1).u64(lsn).str("pfx").i32(3).raw(b"abc"),
        ),
        ("stream start", 2, false, Wire::tag(b'S').u32(9).u8(1)),
        ("stream insert", 2, true, insert_wire(Some(9))),
        ("stream stop", 2, true, Wire::tag(b'E')),
        (
            "stream commit",
            2,
            false,
            Wire::tag(b'c').u32(9).u8(0).u64(lsn).u64(lsn + 8).i64(1),
        ),
        ("stream abort", 2, false, Wire::tag(b'A').u32(9).u32(10)),
        (
            "stream abort v4",
            4,
            false,
            Wire::tag(b'A').u32(9).u32(10).u64(lsn).i64(5),
        ),
        (
            "begin prepare",
            3,
            false,
            Wire::tag(b'b')
                .u64(lsn)
                .u64(lsn + 8)
                .i64(1)
                .u32(7)
                .str("gid1"),
        ),
        (
            "prepare",
            3,
            false,
            Wire::tag(b'P')
                .u8(0)
                .u64(lsn)
                .u64(lsn + 8)
                .i64(1)
                .u32(7)
                .str("gid1"),
        ),
        (
            "commit prepared",
            3,
            false,
            Wire::tag(b'K')
                .u8(0)
                .u64(lsn)
                .u64(lsn + 8)
                .i64(1)
                .u32(7)
                .str("gid1"),
        ),
        (
            "rollback prepared",
            3,
            false,
            Wire::tag(b'r')
                .u8(0)
                .u64(lsn)
                .u64(lsn + 8)
                .i64(1)
                .i64(2)
                .u32(7)
                .str("gid1"),
        ),
        (
            "stream prepare",
            3,
            false,
            Wire::tag(b'p')
                .u8(0)
                .u64(lsn)
                .u64(lsn + 8)
                .i64(1)
                .u32(7)
                .str("gid1"),
        ),
    ]
}

fn decoder_in(version: u32, in_stream: bool) -> Decoder {
    let mut d = decoder(version);
    if in_stream {
        d.decode(&stream_start(9)).unwrap();
    }
    d
}

#[test]
fn new_accepts_versions_one_to_four() {
    for v in 1..=4 {
        let d = Decoder::new(v).unwrap();
        assert_eq!(
            (d.proto_version(), d.in_stream(), d.relations().len()),
            (v, false, 0)
        );
    }
    for v in [0, 5, u32::MAX] {
        assert_eq!(
            Decoder::new(v).unwrap_err().kind,
            DecodeErrorKind::UnsupportedVersion(v)
        );
    }
}

#[test]
fn begin_commit_and_origin() {
    let mut d = Decoder::new(1).unwrap();
    let m = d
        .decode(&Wire::tag(b'B').u64(0x10).i64(-5).u32(742).bytes())
        .unwrap();
    assert_eq!(
        m,
        Message::Begin(Begin {
            final_lsn: Lsn(0x10),
            commit_time: -5,
            xid: 742
        })
    );
    let m = d
        .decode(&Wire::tag(b'C').u8(0).u64(0x10).u64(0x18).i64(9).bytes())
        .unwrap();
    assert_eq!(
        m,
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x10),
            end_lsn: Lsn(0x18),
            commit_time: 9
        })
    );
    let m = d
        .decode(&Wire::tag(b'O').u64(0x20).str("node_a").bytes())
        .unwrap();
    assert_eq!(
        m,
        Message::Origin(Origin {
            commit_lsn: Lsn(0x20),
            name: "node_a".into()
        })
    );
}

#[test]
fn relation_is_cached_and_replaced_by_the_next_one() {
    let mut d = Decoder::new(1).unwrap();
    let Message::Relation(r) = d.decode(&relation_wire(None).bytes()).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(
        (r.xid, r.id, r.namespace.as_str(), r.name.as_str()),
        (None, REL, "public", "t")
    );
    assert_eq!(r.replica_identity, ReplicaIdentity::Default);
    assert_eq!(r.columns.len(), 3);
    assert_eq!(
        r.columns[0],
        Column {
            is_key: true,
            name: "id".into(),
            type_oid: oid::INT4,
            type_modifier: -1
        }
    );
    assert!(!r.columns[1].is_key);
    assert_eq!(d.relations().get(REL).map(|c| &**c), Some(&r));

    // After ALTER TABLE: one column, REPLICA IDENTITY FULL, in pg_catalog.
    let altered = Wire::tag(b'R')
        .u32(REL)
        .str("")
        .str("t")
        .u8(b'f')
        .i16(1)
        .u8(0)
        .str("id")
        .u32(oid::INT8)
        .i32(-1);
    d.decode(&altered.bytes()).unwrap();
    let cached = d.relations().get(REL).unwrap();
    assert_eq!(
        (cached.columns.len(), cached.replica_identity),
        (1, ReplicaIdentity::Full)
    );
    assert_eq!(cached.qualified_name(), "pg_catalog.t");
    assert_eq!(d.relations().len(), 1);
    // The old shape no longer fits: a three-column insert is now an error.
    let err = d.decode(&insert_wire(None).bytes()).unwrap_err();
    assert_eq!(
        err.kind,
        DecodeErrorKind::ColumnCountMismatch {
            rel_id: REL,
            expected: 1,
            got: 3
        }
    );
}

#[test]
fn type_message() {
    let mut d = Decoder::new(1).unwrap();
    let m = d
        .decode(
            &Wire::tag(b'Y')
                .u32(16_500)
                .str("public")
                .str("mood")
                .bytes(),
        )
        .unwrap();
    assert_eq!(
        m,
        Message::Type(TypeInfo {
            xid: None,
            oid: 16_500,
            namespace: "public".into(),
            name: "mood".into()
        })
    );
}

#[test]
fn insert_reads_every_column_kind_without_copying() {
    let mut d = decoder(1);
    let buf = Wire::tag(b'I')
        .u32(REL)
        .u8(b'N')
        .i16(3)
        .text("42")
        .u8(b'u')
        .u8(b'b')
        .i32(2)
        .raw(&[0xde, 0xad])
        .bytes();
    let Message::Insert(i) = d.decode(&buf).unwrap() else {
        panic!("not an insert")
    };
    assert_eq!((i.xid, i.rel_id), (None, REL));
    assert_eq!(
        i.new,
        vec![
            TupleValue::Text(Bytes::from_static(b"42")),
            TupleValue::UnchangedToast,
            TupleValue::Binary(Bytes::from_static(&[0xde, 0xad])),
        ]
    );
    let TupleValue::Text(t) = &i.new[0] else {
        unreachable!()
    };
    assert_eq!(
        t.as_ptr(),
        buf[13..].as_ptr(),
        "text value is a view of the input"
    );
    let rel = d.relations().get(REL).unwrap();
    assert_eq!(
        rel.typed_row(&i.new).unwrap(),
        vec![
            Some(Value::Int4(42)),
            None,
            Some(Value::Bytea(vec![0xde, 0xad]))
        ]
    );
}

#[test]
fn update_with_and_without_old_tuple() {
    let mut d = decoder(1);
    let new = |w: Wire| w.u8(b'N').i16(3).text("2").u8(b'u').u8(b'n');
    let m = d.decode(&new(Wire::tag(b'U').u32(REL)).bytes()).unwrap();
    assert!(matches!(m, Message::Update(Update { old: None, .. })));

    let key = new(Wire::tag(b'U')
        .u32(REL)
        .u8(b'K')
        .i16(3)
        .text("1")
        .u8(b'n')
        .u8(b'n'));
    let Message::Update(u) = d.decode(&key.bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(
        u.old,
        Some(OldTuple::Key(vec![
            TupleValue::Text(Bytes::from_static(b"1")),
            TupleValue::Null,
            TupleValue::Null
        ]))
    );
    assert_eq!(u.new[0], TupleValue::Text(Bytes::from_static(b"2")));

    let full = new(Wire::tag(b'U')
        .u32(REL)
        .u8(b'O')
        .i16(3)
        .text("1")
        .text("a")
        .u8(b'n'));
    let Message::Update(u) = d.decode(&full.bytes()).unwrap() else {
        panic!()
    };
    assert!(matches!(u.old, Some(OldTuple::Full(ref t)) if t.len() == 3));
}

#[test]
fn delete_with_key_or_full_old_row() {
    let mut d = decoder(1);
    for (marker, full) in [(b'K', false), (b'O', true)] {
        let w = Wire::tag(b'D')
            .u32(REL)
            .u8(marker)
            .i16(3)
            .text("1")
            .u8(b'n')
            .u8(b'n');
        let Message::Delete(del) = d.decode(&w.bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(matches!(del.old, OldTuple::Full(_)), full);
        assert_eq!(
            del.old.data()[0],
            TupleValue::Text(Bytes::from_static(b"1"))
        );
    }
}

#[test]
fn truncate_options_and_relations() {
    let mut d = Decoder::new(1).unwrap();
    for (options, cascade, restart) in [
        (0, false, false),
        (1, true, false),
        (2, false, true),
        (3, true, true),
    ] {
        let m = d
            .decode(&Wire::tag(b'T').i32(2).u8(options).u32(1).u32(2).bytes())
            .unwrap();
        assert_eq!(
            m,
            Message::Truncate(Truncate {
                xid: None,
                cascade,
                restart_identity: restart,
                rel_ids: vec![1, 2]
            })
        );
    }
}

#[test]
fn logical_messages_transactional_or_not() {
    let mut d = Decoder::new(1).unwrap();
    for flags in [0, 1] {
        let m = d
            .decode(
                &Wire::tag(b'M')
                    .u8(flags)
                    .u64(0x30)
                    .str("app")
                    .i32(4)
                    .raw(b"\0\xffhi")
                    .bytes(),
            )
            .unwrap();
        assert_eq!(
            m,
            Message::Message(LogicalMessage {
                xid: None,
                transactional: flags == 1,
                lsn: Lsn(0x30),
                prefix: "app".into(),
                content: Bytes::from_static(b"\0\xffhi")
            })
        );
    }
}

#[test]
fn streamed_block_data_messages_carry_the_xid() {
    let mut d = Decoder::new(2).unwrap();
    assert_eq!(
        d.decode(&stream_start(900)).unwrap(),
        Message::StreamStart(StreamStart {
            xid: 900,
            first_segment: true
        })
    );
    assert!(d.in_stream());
    let Message::Relation(r) = d.decode(&relation_wire(Some(900)).bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(r.xid, Some(900));
    let Message::Insert(i) = d.decode(&insert_wire(Some(900)).bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(i.xid, Some(900));
    let m = d
        .decode(
            &Wire::tag(b'Y')
                .u32(900)
                .u32(16_500)
                .str("public")
                .str("mood")
                .bytes(),
        )
        .unwrap();
    assert!(matches!(m, Message::Type(TypeInfo { xid: Some(900), .. })));
    let m = d
        .decode(&Wire::tag(b'T').u32(900).i32(1).u8(0).u32(REL).bytes())
        .unwrap();
    assert!(matches!(
        m,
        Message::Truncate(Truncate { xid: Some(900), .. })
    ));
    let m = d
        .decode(
            &Wire::tag(b'M')
                .u32(900)
                .u8(1)
                .u64(1)
                .str("p")
                .i32(0)
                .bytes(),
        )
        .unwrap();
    assert!(matches!(
        m,
        Message::Message(LogicalMessage { xid: Some(900), .. })
    ));
    let m = d
        .decode(
            &Wire::tag(b'U')
                .u32(900)
                .u32(REL)
                .u8(b'N')
                .i16(3)
                .text("1")
                .u8(b'n')
                .u8(b'n')
                .bytes(),
        )
        .unwrap();
    assert!(matches!(m, Message::Update(Update { xid: Some(900), .. })));
    let m = d
        .decode(
            &Wire::tag(b'D')
                .u32(900)
                .u32(REL)
                .u8(b'K')
                .i16(3)
                .text("1")
                .u8(b'n')
                .u8(b'n')
                .bytes(),
        )
        .unwrap();
    assert!(matches!(m, Message::Delete(Delete { xid: Some(900), .. })));

    assert_eq!(
        d.decode(&Wire::tag(b'E').bytes()).unwrap(),
        Message::StreamStop
    );
    assert!(!d.in_stream());
    // Outside the block the same insert has no xid.
    let Message::Insert(i) = d.decode(&insert_wire(None).bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(i.xid, None);

    let later = Wire::tag(b'S').u32(900).u8(0).bytes();
    assert!(matches!(
        d.decode(&later).unwrap(),
        Message::StreamStart(StreamStart {
            first_segment: false,
            ..
        })
    ));
    d.decode(&Wire::tag(b'E').bytes()).unwrap();
    let m = d
        .decode(
            &Wire::tag(b'c')
                .u32(900)
                .u8(0)
                .u64(0x40)
                .u64(0x48)
                .i64(3)
                .bytes(),
        )
        .unwrap();
    assert_eq!(
        m,
        Message::StreamCommit(StreamCommit {
            xid: 900,
            flags: 0,
            commit_lsn: Lsn(0x40),
            end_lsn: Lsn(0x48),
            commit_time: 3
        })
    );
}

#[test]
fn stream_abort_reads_abort_info_only_on_v4_when_present() {
    let plain = Wire::tag(b'A').u32(900).u32(901);
    let parallel = plain.clone().u64(0x50).i64(77);
    for v in 2..=4 {
        let m = Decoder::new(v).unwrap().decode(&plain.bytes()).unwrap();
        assert_eq!(
            m,
            Message::StreamAbort(StreamAbort {
                xid: 900,
                subxid: 901,
                abort: None
            })
        );
    }
    let m = Decoder::new(4).unwrap().decode(&parallel.bytes()).unwrap();
    assert_eq!(
        m,
        Message::StreamAbort(StreamAbort {
            xid: 900,
            subxid: 901,
            abort: Some(AbortInfo {
                abort_lsn: Lsn(0x50),
                abort_time: 77
            })
        })
    );
    for v in [2, 3] {
        let err = Decoder::new(v)
            .unwrap()
            .decode(&parallel.bytes())
            .unwrap_err();
        assert_eq!(
            (err.kind, err.offset),
            (DecodeErrorKind::TrailingBytes(16), 9)
        );
    }
    // Neither plain nor with abort info: trailing garbage.
    let err = Decoder::new(4)
        .unwrap()
        .decode(&plain.clone().u64(1).bytes())
        .unwrap_err();
    assert_eq!(err.kind, DecodeErrorKind::TrailingBytes(8));
}

#[test]
fn two_phase_messages() {
    let mut d = Decoder::new(3).unwrap();
    let m = d
        .decode(
            &Wire::tag(b'b')
                .u64(1)
                .u64(2)
                .i64(3)
                .u32(4)
                .str("tx-1")
                .bytes(),
        )
        .unwrap();
    assert_eq!(
        m,
        Message::BeginPrepare(BeginPrepare {
            prepare_lsn: Lsn(1),
            end_lsn: Lsn(2),
            prepare_time: 3,
            xid: 4,
            gid: "tx-1".into()
        })
    );
    let prepare = Prepare {
        flags: 0,
        prepare_lsn: Lsn(1),
        end_lsn: Lsn(2),
        prepare_time: 3,
        xid: 4,
        gid: "tx-1".into(),
    };
    let w = |tag| {
        Wire::tag(tag)
            .u8(0)
            .u64(1)
            .u64(2)
            .i64(3)
            .u32(4)
            .str("tx-1")
            .bytes()
    };
    assert_eq!(
        d.decode(&w(b'P')).unwrap(),
        Message::Prepare(prepare.clone())
    );
    assert_eq!(d.decode(&w(b'p')).unwrap(), Message::StreamPrepare(prepare));
    assert_eq!(
        d.decode(&w(b'K')).unwrap(),
        Message::CommitPrepared(CommitPrepared {
            flags: 0,
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            commit_time: 3,
            xid: 4,
            gid: "tx-1".into()
        })
    );
    let m = d
        .decode(
            &Wire::tag(b'r')
                .u8(0)
                .u64(1)
                .u64(2)
                .i64(3)
                .i64(4)
                .u32(5)
                .str("tx-1")
                .bytes(),
        )
        .unwrap();
    assert_eq!(
        m,
        Message::RollbackPrepared(RollbackPrepared {
            flags: 0,
            prepare_end_lsn: Lsn(1),
            rollback_end_lsn: Lsn(2),
            prepare_time: 3,
            rollback_time: 4,
            xid: 5,
            gid: "tx-1".into()
        })
    );
}

#[test]
fn messages_of_later_versions_are_rejected() {
    for (name, _, in_stream, wire) in valid_messages() {
        // By tag: a streamed Insert is still an Insert, a v4 Stream Abort a Stream Abort.
        for v in 1..super::error::min_version(wire.0[0]) {
            let mut d = decoder(v);
            let err = d.decode(&wire.bytes()).unwrap_err();
            assert_eq!(
                err.kind,
                DecodeErrorKind::UnsupportedMessageForVersion {
                    tag: wire.0[0],
                    version: v
                },
                "{name} in v{v} (in_stream {in_stream})"
            );
        }
    }
}

#[test]
fn every_message_decodes_in_every_version_that_has_it() {
    for (name, min, in_stream, wire) in valid_messages() {
        for v in min..=4 {
            let mut d = decoder_in(v, in_stream);
            d.decode(&wire.bytes())
                .unwrap_or_else(|e| panic!("{name} v{v}: {e}"));
        }
    }
}

#[test]
fn stream_messages_out_of_place_are_state_violations() {
    let mut d = decoder_in(2, true);
    for wire in [
        stream_start(1),
        Wire::tag(b'c').u32(9).u8(0).u64(1).u64(2).i64(3).bytes(),
        Wire::tag(b'A').u32(9).u32(9).bytes(),
    ] {
        let err = d.decode(&wire).unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::StreamStateViolation(_)),
            "{err}"
        );
        assert!(d.in_stream());
    }
    let err = decoder_in(3, true).decode(
        &Wire::tag(b'p')
            .u8(0)
            .u64(1)
            .u64(2)
            .i64(3)
            .u32(4)
            .str("g")
            .bytes(),
    );
    assert!(matches!(
        err.unwrap_err().kind,
        DecodeErrorKind::StreamStateViolation(_)
    ));
    let err = Decoder::new(2)
        .unwrap()
        .decode(&Wire::tag(b'E').bytes())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pgoutput Stream Stop ('E') message: Stream Stop without Stream Start at byte 0"
    );
}

#[test]
fn truncated_at_every_byte_is_an_error_and_changes_nothing() {
    for (name, version, in_stream, wire) in valid_messages() {
        for len in 0..wire.0.len() {
            if name == "stream abort v4" && len == 9 {
                continue; // cut right before the abort info: a complete plain Stream Abort
            }
            let mut d = decoder_in(version, in_stream);
            let prefix = Bytes::copy_from_slice(&wire.0[..len]);
            let err = d.decode(&prefix).unwrap_err();
            if len == 0 {
                assert_eq!(err.kind, DecodeErrorKind::Empty);
            } else {
                assert_eq!(err.tag, Some(wire.0[0]), "{name} cut at {len}");
                assert!(
                    err.offset <= len,
                    "{name} cut at {len}: offset {}",
                    err.offset
                );
            }
            assert_eq!(d.in_stream(), in_stream, "{name} cut at {len}");
            assert_eq!(
                d.relations().get(REL).unwrap().columns.len(),
                3,
                "{name} cut at {len}"
            );
        }
    }
}

#[test]
fn trailing_bytes_after_any_message_are_an_error() {
    for (name, version, in_stream, wire) in valid_messages() {
        if name.starts_with("stream abort") {
            continue; // whether bytes after it are abort info depends on their count: below
        }
        let mut d = decoder_in(version, in_stream);
        let err = d.decode(&wire.clone().u8(0).bytes()).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::TrailingBytes(1), "{name}");
        assert_eq!(err.offset, wire.0.len(), "{name}");
    }
    for extra in [1, 15, 17, 32] {
        let err = decoder(4)
            .decode(&Wire::tag(b'A').u32(1).u32(1).raw(&vec![0; extra]).bytes())
            .unwrap_err();
        assert_eq!(
            (err.kind, err.offset),
            (DecodeErrorKind::TrailingBytes(extra), 9)
        );
    }
}

#[test]
fn malformed_input_reports_kind_and_offset() {
    let cases: Vec<(&str, Wire, DecodeErrorKind, usize)> = vec![
        (
            "unknown tag",
            Wire::tag(b'Z'),
            DecodeErrorKind::UnknownTag(b'Z'),
            0,
        ),
        (
            "unknown relation",
            Wire::tag(b'I').u32(REL + 1).u8(b'N').i16(0),
            DecodeErrorKind::UnknownRelation(REL + 1),
            1,
        ),
        (
            "column count mismatch",
            Wire::tag(b'I').u32(REL).u8(b'N').i16(2).u8(b'n').u8(b'n'),
            DecodeErrorKind::ColumnCountMismatch {
                rel_id: REL,
                expected: 3,
                got: 2,
            },
            6,
        ),
        (
            "bad tuple kind",
            Wire::tag(b'I').u32(REL).u8(b'N').i16(3).u8(b'n').u8(b'x'),
            DecodeErrorKind::UnknownTupleKind(b'x'),
            9,
        ),
        (
            "insert without N",
            Wire::tag(b'I').u32(REL).u8(b'K').i16(3),
            DecodeErrorKind::UnknownOldTupleKind(b'K'),
            5,
        ),
        (
            "update with bad marker",
            Wire::tag(b'U').u32(REL).u8(b'X'),
            DecodeErrorKind::UnknownOldTupleKind(b'X'),
            5,
        ),
        (
            "update old tuple then no N",
            Wire::tag(b'U')
                .u32(REL)
                .u8(b'K')
                .i16(3)
                .u8(b'n')
                .u8(b'n')
                .u8(b'n')
                .u8(b'K'),
            DecodeErrorKind::UnknownOldTupleKind(b'K'),
            11,
        ),
        (
            "delete with N",
            Wire::tag(b'D').u32(REL).u8(b'N'),
            DecodeErrorKind::UnknownOldTupleKind(b'N'),
            5,
        ),
        (
            "negative value length",
            Wire::tag(b'I').u32(REL).u8(b'N').i16(3).u8(b't').i32(-2),
            DecodeErrorKind::InvalidLength(-2),
            9,
        ),
        (
            "value longer than the message",
            Wire::tag(b'I')
                .u32(REL)
                .u8(b'N')
                .i16(3)
                .u8(b't')
                .i32(i32::MAX)
                .raw(b"ab"),
            DecodeErrorKind::UnexpectedEof {
                needed: i32::MAX as usize,
                available: 2,
            },
            9,
        ),
        (
            "negative message content length",
            Wire::tag(b'M').u8(0).u64(1).str("p").i32(-1),
            DecodeErrorKind::InvalidLength(-1),
            12,
        ),
        (
            "negative truncate count",
            Wire::tag(b'T').i32(-1).u8(0),
            DecodeErrorKind::InvalidLength(-1),
            1,
        ),
        (
            "truncate count beyond the message",
            Wire::tag(b'T').i32(i32::MAX).u8(0).u32(1),
            DecodeErrorKind::InvalidLength(i64::from(i32::MAX)),
            1,
        ),
        (
            "bad replica identity",
            Wire::tag(b'R').u32(1).str("s").str("t").u8(b'x').i16(0),
            DecodeErrorKind::UnknownReplicaIdentity(b'x'),
            9,
        ),
        (
            "relation name not UTF-8",
            Wire::tag(b'R')
                .u32(1)
                .raw(b"\xff\xfe\0")
                .str("t")
                .u8(b'd')
                .i16(0),
            DecodeErrorKind::InvalidUtf8,
            5,
        ),
        (
            "origin name without NUL",
            Wire::tag(b'O').u64(1).raw(b"abc"),
            DecodeErrorKind::MissingNul,
            9,
        ),
        (
            "65535 columns in a short relation",
            Wire::tag(b'R')
                .u32(1)
                .str("s")
                .str("t")
                .u8(b'd')
                .i16(-1)
                .u8(0),
            DecodeErrorKind::MissingNul,
            13,
        ),
    ];
    for (name, wire, kind, offset) in cases {
        let err = decoder(1).decode(&wire.bytes()).unwrap_err();
        assert_eq!((&err.kind, err.offset), (&kind, offset), "{name}: {err}");
        assert_eq!(err.tag, Some(wire.0[0]), "{name}");
    }
}

// ---- property tests ----

fn any_lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

/// pgoutput strings: any text without NUL.
fn any_name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn any_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn any_tuple_value() -> impl Strategy<Value = TupleValue> {
    prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::UnchangedToast),
        any_bytes().prop_map(TupleValue::Text),
        any_bytes().prop_map(TupleValue::Binary),
    ]
}

fn any_tuple(columns: usize) -> impl Strategy<Value = TupleData> {
    proptest::collection::vec(any_tuple_value(), columns)
}

fn any_old(columns: usize) -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        any_tuple(columns).prop_map(OldTuple::Key),
        any_tuple(columns).prop_map(OldTuple::Full),
    ]
}

fn any_relation() -> impl Strategy<Value = Relation> {
    let column = (any::<bool>(), any_name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| Column {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    );
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    (
        any::<Option<Xid>>(),
        any::<RelId>(),
        any_name(),
        any_name(),
        identity,
        proptest::collection::vec(column, 0..5),
    )
        .prop_map(
            |(xid, id, namespace, name, replica_identity, columns)| Relation {
                xid,
                id,
                namespace,
                name,
                replica_identity,
                columns,
            },
        )
}

fn any_prepare() -> impl Strategy<Value = Prepare> {
    (
        any::<u8>(),
        any_lsn(),
        any_lsn(),
        any::<i64>(),
        any::<Xid>(),
        any_name(),
    )
        .prop_map(
            |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| Prepare {
                flags,
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid,
            },
        )
}

/// Any message, with the xid of data messages set or not.
fn any_message() -> impl Strategy<Value = Message> {
    let row = (any::<Option<Xid>>(), any::<RelId>(), 0..5usize);
    prop_oneof![
        (any_lsn(), any::<i64>(), any::<Xid>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), any_lsn(), any_lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| {
                Message::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            }
        ),
        (any_lsn(), any_name())
            .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        any_relation().prop_map(Message::Relation),
        (any::<Option<Xid>>(), any::<u32>(), any_name(), any_name()).prop_map(
            |(xid, oid, namespace, name)| {
                Message::Type(TypeInfo {
                    xid,
                    oid,
                    namespace,
                    name,
                })
            }
        ),
        row.clone().prop_flat_map(|(xid, rel_id, n)| any_tuple(n)
            .prop_map(move |new| Message::Insert(Insert { xid, rel_id, new }))),
        row.clone().prop_flat_map(|(xid, rel_id, n)| (
            proptest::option::of(any_old(n)),
            any_tuple(n)
        )
            .prop_map(move |(old, new)| Message::Update(Update {
                xid,
                rel_id,
                old,
                new
            }))),
        row.prop_flat_map(|(xid, rel_id, n)| any_old(n)
            .prop_map(move |old| Message::Delete(Delete { xid, rel_id, old }))),
        (
            any::<Option<Xid>>(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any::<RelId>(), 0..5)
        )
            .prop_map(
                |(xid, cascade, restart_identity, rel_ids)| Message::Truncate(Truncate {
                    xid,
                    cascade,
                    restart_identity,
                    rel_ids
                })
            ),
        (
            any::<Option<Xid>>(),
            any::<bool>(),
            any_lsn(),
            any_name(),
            any_bytes()
        )
            .prop_map(
                |(xid, transactional, lsn, prefix, content)| Message::Message(LogicalMessage {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content
                })
            ),
        (any::<Xid>(), any::<bool>()).prop_map(|(xid, first_segment)| Message::StreamStart(
            StreamStart { xid, first_segment }
        )),
        Just(Message::StreamStop),
        (
            any::<Xid>(),
            any::<u8>(),
            any_lsn(),
            any_lsn(),
            any::<i64>()
        )
            .prop_map(|(xid, flags, commit_lsn, end_lsn, commit_time)| {
                Message::StreamCommit(StreamCommit {
                    xid,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            }),
        (
            any::<Xid>(),
            any::<Xid>(),
            proptest::option::of((any_lsn(), any::<i64>()))
        )
            .prop_map(|(xid, subxid, abort)| {
                Message::StreamAbort(StreamAbort {
                    xid,
                    subxid,
                    abort: abort.map(|(abort_lsn, abort_time)| AbortInfo {
                        abort_lsn,
                        abort_time,
                    }),
                })
            }),
        (any_lsn(), any_lsn(), any::<i64>(), any::<Xid>(), any_name()).prop_map(
            |(prepare_lsn, end_lsn, prepare_time, xid, gid)| Message::BeginPrepare(BeginPrepare {
                prepare_lsn,
                end_lsn,
                prepare_time,
                xid,
                gid
            })
        ),
        any_prepare().prop_map(Message::Prepare),
        any_prepare().prop_map(Message::StreamPrepare),
        (
            any::<u8>(),
            any_lsn(),
            any_lsn(),
            any::<i64>(),
            any::<Xid>(),
            any_name()
        )
            .prop_map(|(flags, commit_lsn, end_lsn, commit_time, xid, gid)| {
                Message::CommitPrepared(CommitPrepared {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                    xid,
                    gid,
                })
            }),
        (
            any::<u8>(),
            any_lsn(),
            any_lsn(),
            any::<i64>(),
            any::<i64>(),
            any::<Xid>(),
            any_name()
        )
            .prop_map(
                |(
                    flags,
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_time,
                    rollback_time,
                    xid,
                    gid,
                )| {
                    Message::RollbackPrepared(RollbackPrepared {
                        flags,
                        prepare_end_lsn,
                        rollback_end_lsn,
                        prepare_time,
                        rollback_time,
                        xid,
                        gid,
                    })
                }
            ),
    ]
}

/// A v4 decoder in the state `msg` needs: its relation cached, inside a streamed block
/// when it carries a stream xid (or is Stream Stop).
fn decoder_for(msg: &Message) -> Decoder {
    let mut d = Decoder::new(4).unwrap();
    let row = match msg {
        Message::Insert(m) => Some((m.rel_id, m.new.len())),
        Message::Update(m) => Some((m.rel_id, m.new.len())),
        Message::Delete(m) => Some((m.rel_id, m.old.data().len())),
        _ => None,
    };
    if let Some((id, n)) = row {
        let rel = Relation {
            xid: None,
            id,
            namespace: "s".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: (0..n)
                .map(|i| Column {
                    is_key: i == 0,
                    name: format!("c{i}"),
                    type_oid: oid::TEXT,
                    type_modifier: -1,
                })
                .collect(),
        };
        d.decode(&encode(&Message::Relation(rel))).unwrap();
    }
    let streamed = match msg {
        Message::Relation(m) => m.xid.is_some(),
        Message::Type(m) => m.xid.is_some(),
        Message::Insert(m) => m.xid.is_some(),
        Message::Update(m) => m.xid.is_some(),
        Message::Delete(m) => m.xid.is_some(),
        Message::Truncate(m) => m.xid.is_some(),
        Message::Message(m) => m.xid.is_some(),
        Message::StreamStop => true,
        _ => false,
    };
    if streamed {
        d.decode(&stream_start(1)).unwrap();
    }
    d
}

/// Decoders in assorted states: each version, fresh or with relations cached, in a
/// streamed block or not.
fn primed_decoder(version: u32, relations: bool, in_stream: bool) -> Decoder {
    let mut d = Decoder::new(version).unwrap();
    if relations {
        d.decode(&relation_wire(None).bytes()).unwrap();
        let empty = Wire::tag(b'R').u32(1).str("").str("e").u8(b'n').i16(0);
        d.decode(&empty.bytes()).unwrap();
    }
    if in_stream && version >= 2 {
        d.decode(&stream_start(7)).unwrap();
    }
    d
}

proptest! {
    #[test]
    fn encode_then_decode_gives_the_message_back(msg in any_message()) {
        let mut d = decoder_for(&msg);
        let decoded = d.decode(&encode(&msg));
        prop_assert_eq!(decoded, Ok(msg));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        version in 1..=4u32,
        relations in any::<bool>(),
        in_stream in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut d = primed_decoder(version, relations, in_stream);
        let _ = d.decode(&Bytes::from(bytes));
    }

    #[test]
    fn bytes_after_a_valid_tag_never_panic(
        version in 1..=4u32,
        in_stream in any::<bool>(),
        tag in proptest::sample::select(b"BCORYIUDTMSEcAbPKrp".to_vec()),
        rel in prop_oneof![Just(REL), Just(1u32), any::<u32>()],
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // A known relation id right after the tag (and xid) takes row messages deeper.
        let mut d = primed_decoder(version, true, in_stream);
        let mut w = Wire::tag(tag);
        if in_stream && version >= 2 {
            w = w.u32(7);
        }
        let _ = d.decode(&w.u32(rel).raw(&tail).bytes());
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        msg in any_message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut d = decoder_for(&msg);
        let mut bytes = encode(&msg).to_vec();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let _ = d.decode(&Bytes::from(bytes.clone()));
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = d.decode(&Bytes::from(bytes));
    }

    #[test]
    fn decoded_rows_convert_without_panicking(
        oids in proptest::collection::vec(0..4000u32, 3),
        msg in any_message(),
    ) {
        // Whatever tuple data decodes, typed conversion of it errs or succeeds, never panics.
        let mut d = decoder_for(&msg);
        if let Ok(Message::Insert(Insert { new, .. })) = d.decode(&encode(&msg)) {
            for (v, oid) in new.iter().zip(oids.iter().cycle()) {
                let _ = Value::from_tuple(*oid, v);
            }
        }
    }
}
