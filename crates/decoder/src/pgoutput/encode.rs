//! Test-only encoder, the inverse of the decoder (as `proto.c`'s `logicalrep_write_*`
//! functions write), so property tests can round-trip arbitrary messages.
//!
//! Data messages are written with their xid when it is set, Stream Abort with its abort
//! info when set: the caller puts the decoder in the matching state and version.

use bytes::{BufMut, Bytes, BytesMut};

use super::messages::{Message, OldTuple, Prepare, ReplicaIdentity, TupleData, TupleValue, Xid};

/// The wire form of `msg`.
pub(super) fn encode(msg: &Message) -> Bytes {
    let mut b = BytesMut::new();
    match msg {
        Message::Begin(m) => {
            b.put_u8(b'B');
            b.put_u64(m.final_lsn.0);
            b.put_i64(m.commit_time);
            b.put_u32(m.xid);
        }
        Message::Commit(m) => {
            b.put_u8(b'C');
            b.put_u8(m.flags);
            b.put_u64(m.commit_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.commit_time);
        }
        Message::Origin(m) => {
            b.put_u8(b'O');
            b.put_u64(m.commit_lsn.0);
            cstr(&mut b, &m.name);
        }
        Message::Relation(m) => {
            b.put_u8(b'R');
            xid(&mut b, m.xid);
            b.put_u32(m.id);
            cstr(&mut b, &m.namespace);
            cstr(&mut b, &m.name);
            b.put_u8(match m.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            });
            b.put_u16(u16::try_from(m.columns.len()).unwrap());
            for c in &m.columns {
                b.put_u8(u8::from(c.is_key));
                cstr(&mut b, &c.name);
                b.put_u32(c.type_oid);
                b.put_i32(c.type_modifier);
            }
        }
        Message::Type(m) => {
            b.put_u8(b'Y');
            xid(&mut b, m.xid);
            b.put_u32(m.oid);
            cstr(&mut b, &m.namespace);
            cstr(&mut b, &m.name);
        }
        Message::Insert(m) => {
            b.put_u8(b'I');
            xid(&mut b, m.xid);
            b.put_u32(m.rel_id);
            b.put_u8(b'N');
            tuple(&mut b, &m.new);
        }
        Message::Update(m) => {
            b.put_u8(b'U');
            xid(&mut b, m.xid);
            b.put_u32(m.rel_id);
            if let Some(old) = &m.old {
                old_tuple(&mut b, old);
            }
            b.put_u8(b'N');
            tuple(&mut b, &m.new);
        }
        Message::Delete(m) => {
            b.put_u8(b'D');
            xid(&mut b, m.xid);
            b.put_u32(m.rel_id);
            old_tuple(&mut b, &m.old);
        }
        Message::Truncate(m) => {
            b.put_u8(b'T');
            xid(&mut b, m.xid);
            b.put_i32(i32::try_from(m.rel_ids.len()).unwrap());
            b.put_u8(u8::from(m.cascade) | (u8::from(m.restart_identity) << 1));
            for id in &m.rel_ids {
                b.put_u32(*id);
            }
        }
        Message::Message(m) => {
            b.put_u8(b'M');
            xid(&mut b, m.xid);
            b.put_u8(u8::from(m.transactional));
            b.put_u64(m.lsn.0);
            cstr(&mut b, &m.prefix);
            b.put_i32(i32::try_from(m.content.len()).unwrap());
            b.put_slice(&m.content);
        }
        Message::StreamStart(m) => {
            b.put_u8(b'S');
            b.put_u32(m.xid);
            b.put_u8(u8::from(m.first_segment));
        }
        Message::StreamStop => b.put_u8(b'E'),
        Message::StreamCommit(m) => {
            b.put_u8(b'c');
            b.put_u32(m.xid);
            b.put_u8(m.flags);
            b.put_u64(m.commit_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.commit_time);
        }
        Message::StreamAbort(m) => {
            b.put_u8(b'A');
            b.put_u32(m.xid);
            b.put_u32(m.subxid);
            if let Some(a) = m.abort {
                b.put_u64(a.abort_lsn.0);
                b.put_i64(a.abort_time);
            }
        }
        Message::BeginPrepare(m) => {
            b.put_u8(b'b');
            b.put_u64(m.prepare_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.prepare_time);
            b.put_u32(m.xid);
            cstr(&mut b, &m.gid);
        }
        Message::Prepare(m) => prepare(&mut b, b'P', m),
        Message::StreamPrepare(m) => prepare(&mut b, b'p', m),
        Message::CommitPrepared(m) => {
            b.put_u8(b'K');
            b.put_u8(m.flags);
            b.put_u64(m.commit_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.commit_time);
            b.put_u32(m.xid);
            cstr(&mut b, &m.gid);
        }
        Message::RollbackPrepared(m) => {
            b.put_u8(b'r');
            b.put_u8(m.flags);
            b.put_u64(m.prepare_end_lsn.0);
            b.put_u64(m.rollback_end_lsn.0);
            b.put_i64(m.prepare_time);
            b.put_i64(m.rollback_time);
            b.put_u32(m.xid);
            cstr(&mut b, &m.gid);
        }
    }
    b.freeze()
}

fn xid(b: &mut BytesMut, xid: Option<Xid>) {
    if let Some(x) = xid {
        b.put_u32(x);
    }
}

fn cstr(b: &mut BytesMut, s: &str) {
    assert!(!s.contains('\0'), "pgoutput strings cannot hold NUL");
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn tuple(b: &mut BytesMut, t: &TupleData) {
    b.put_u16(u16::try_from(t.len()).unwrap());
    for v in t {
        match v {
            TupleValue::Null => b.put_u8(b'n'),
            TupleValue::UnchangedToast => b.put_u8(b'u'),
            TupleValue::Text(data) | TupleValue::Binary(data) => {
                b.put_u8(if matches!(v, TupleValue::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                b.put_i32(i32::try_from(data.len()).unwrap());
                b.put_slice(data);
            }
        }
    }
}

fn old_tuple(b: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(t) => {
            b.put_u8(b'K');
            tuple(b, t);
        }
        OldTuple::Full(t) => {
            b.put_u8(b'O');
            tuple(b, t);
        }
    }
}

fn prepare(b: &mut BytesMut, tag: u8, m: &Prepare) {
    b.put_u8(tag);
    b.put_u8(m.flags);
    b.put_u64(m.prepare_lsn.0);
    b.put_u64(m.end_lsn.0);
    b.put_i64(m.prepare_time);
    b.put_u32(m.xid);
    cstr(b, &m.gid);
}
