//! Decoding one `pgoutput` message: bytes of an XLogData payload to a [`Message`].
//!
//! The wire format is Postgres's "Logical Replication Message Formats" (writer side:
//! `src/backend/replication/logical/proto.c`). What the format leaves to the reader:
//!
//! - Inside a streamed block (v2+, between Stream Start and Stream Stop) Relation, Type,
//!   Insert, Update, Delete, Truncate and Message carry a leading xid. Nothing in those
//!   bytes says so; only the decoder's state does, which is why decoding is a method.
//! - Stream Abort carries its abort LSN and time only under protocol v4 *and*
//!   `streaming = parallel`, again with no flag; the decoder reads them when the version
//!   is 4 and exactly those 16 bytes follow.
//! - Column counts are `Int16` that Postgres reads back unsigned, so we do too.
//!
//! State changes (stream block, relation cache) happen only after a message decoded
//! completely, so an error leaves the decoder as it was. Allocation is bounded by the
//! message length, never by a count field: capacities are capped by the bytes left.

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

use bytes::Bytes;

use super::error::{DecodeError, DecodeErrorKind, min_version};
use super::messages::{
    AbortInfo, Begin, BeginPrepare, Column, Commit, CommitPrepared, Delete, Insert, LogicalMessage,
    Message, OldTuple, Origin, Prepare, RelId, Relation, ReplicaIdentity, RollbackPrepared,
    StreamAbort, StreamCommit, StreamStart, Truncate, TupleData, TupleValue, TypeInfo, Update, Xid,
};
use super::reader::Reader;
use super::relation::RelationCache;
use crate::Lsn;

/// The smallest encoding of one Relation column: flags, empty name, type OID, typmod.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// Truncate option bit: `CASCADE`.
const TRUNCATE_CASCADE: u8 = 1;
/// Truncate option bit: `RESTART IDENTITY`.
const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// Stream Abort's optional v4 tail: abort LSN and abort time.
const ABORT_INFO_LEN: usize = 16;

/// A `pgoutput` decoder for one replication session.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: u32,
    in_stream: bool,
    relations: RelationCache,
}

impl Decoder {
    /// A decoder for `proto_version` (1 to 4), as passed to `START_REPLICATION`.
    pub fn new(proto_version: u32) -> Result<Decoder, DecodeError> {
        if !(1..=4).contains(&proto_version) {
            return Err(DecodeError::new(
                DecodeErrorKind::UnsupportedVersion(proto_version),
                0,
            ));
        }
        Ok(Decoder {
            version: proto_version,
            in_stream: false,
            relations: RelationCache::new(),
        })
    }

    /// The protocol version this decoder speaks.
    pub fn proto_version(&self) -> u32 {
        self.version
    }

    /// Whether the decoder is between Stream Start and Stream Stop.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// The relations seen so far in this session.
    pub fn relations(&self) -> &RelationCache {
        &self.relations
    }

    /// Decodes one complete message (an XLogData payload).
    ///
    /// Tuple values are views of `buf`, not copies. A Relation message is cached
    /// (replacing the earlier shape of its id); Insert, Update and Delete must match a
    /// cached relation's column count. On error the decoder's state is unchanged.
    pub fn decode(&mut self, buf: &Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader::new(buf);
        let tag = r
            .u8()
            .map_err(|_| DecodeError::new(DecodeErrorKind::Empty, 0))?;
        let msg = self
            .body(tag, &mut r)
            .and_then(|msg| r.finish().map(|()| msg))
            .map_err(|e| e.with_tag(tag))?;
        match &msg {
            Message::StreamStart(_) => self.in_stream = true,
            Message::StreamStop => self.in_stream = false,
            Message::Relation(rel) => {
                self.relations.insert(rel.clone());
            }
            _ => {}
        }
        Ok(msg)
    }

    fn body(&self, tag: u8, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        if min_version(tag) > self.version {
            return Err(DecodeError::new(
                DecodeErrorKind::UnsupportedMessageForVersion {
                    tag,
                    version: self.version,
                },
                0,
            ));
        }
        if let Some(violation) = self.stream_violation(tag) {
            return Err(DecodeError::new(
                DecodeErrorKind::StreamStateViolation(violation),
                0,
            ));
        }
        Ok(match tag {
            b'B' => Message::Begin(Begin {
                final_lsn: lsn(r)?,
                commit_time: r.i64()?,
                xid: r.u32()?,
            }),
            b'C' => Message::Commit(Commit {
                flags: r.u8()?,
                commit_lsn: lsn(r)?,
                end_lsn: lsn(r)?,
                commit_time: r.i64()?,
            }),
            b'O' => Message::Origin(Origin {
                commit_lsn: lsn(r)?,
                name: r.cstr()?,
            }),
            b'R' => Message::Relation(self.relation(r)?),
            b'Y' => Message::Type(TypeInfo {
                xid: self.stream_xid(r)?,
                oid: r.u32()?,
                namespace: r.cstr()?,
                name: r.cstr()?,
            }),
            b'I' => {
                let xid = self.stream_xid(r)?;
                let (rel_id, columns) = self.known_relation(r)?;
                expect_marker(r, b'N')?;
                Message::Insert(Insert {
                    xid,
                    rel_id,
                    new: tuple(r, rel_id, columns)?,
                })
            }
            b'U' => {
                let xid = self.stream_xid(r)?;
                let (rel_id, columns) = self.known_relation(r)?;
                let at = r.offset();
                let old = match r.u8()? {
                    b'N' => None,
                    b'K' => Some(OldTuple::Key(tuple(r, rel_id, columns)?)),
                    b'O' => Some(OldTuple::Full(tuple(r, rel_id, columns)?)),
                    other => {
                        return Err(DecodeError::new(
                            DecodeErrorKind::UnknownOldTupleKind(other),
                            at,
                        ));
                    }
                };
                if old.is_some() {
                    expect_marker(r, b'N')?;
                }
                Message::Update(Update {
                    xid,
                    rel_id,
                    old,
                    new: tuple(r, rel_id, columns)?,
                })
            }
            b'D' => {
                let xid = self.stream_xid(r)?;
                let (rel_id, columns) = self.known_relation(r)?;
                let at = r.offset();
                let old = match r.u8()? {
                    b'K' => OldTuple::Key(tuple(r, rel_id, columns)?),
                    b'O' => OldTuple::Full(tuple(r, rel_id, columns)?),
                    other => {
                        return Err(DecodeError::new(
                            DecodeErrorKind::UnknownOldTupleKind(other),
                            at,
                        ));
                    }
                };
                Message::Delete(Delete { xid, rel_id, old })
            }
            b'T' => {
                let xid = self.stream_xid(r)?;
                let count = count(r, 4)?;
                let options = r.u8()?;
                let mut rel_ids = Vec::with_capacity(count.min(r.remaining() / 4));
                for _ in 0..count {
                    rel_ids.push(r.u32()?);
                }
                Message::Truncate(Truncate {
                    xid,
                    cascade: options & TRUNCATE_CASCADE != 0,
                    restart_identity: options & TRUNCATE_RESTART_IDENTITY != 0,
                    rel_ids,
                })
            }
            b'M' => Message::Message(LogicalMessage {
                xid: self.stream_xid(r)?,
                transactional: r.u8()? & 1 != 0,
                lsn: lsn(r)?,
                prefix: r.cstr()?,
                content: r.len_prefixed()?,
            }),
            b'S' => Message::StreamStart(StreamStart {
                xid: r.u32()?,
                first_segment: r.u8()? == 1,
            }),
            b'E' => Message::StreamStop,
            b'c' => Message::StreamCommit(StreamCommit {
                xid: r.u32()?,
                flags: r.u8()?,
                commit_lsn: lsn(r)?,
                end_lsn: lsn(r)?,
                commit_time: r.i64()?,
            }),
            b'A' => {
                let xid = r.u32()?;
                let subxid = r.u32()?;
                let abort = if self.version >= 4 && r.remaining() == ABORT_INFO_LEN {
                    Some(AbortInfo {
                        abort_lsn: lsn(r)?,
                        abort_time: r.i64()?,
                    })
                } else {
                    None
                };
                Message::StreamAbort(StreamAbort { xid, subxid, abort })
            }
            b'b' => Message::BeginPrepare(BeginPrepare {
                prepare_lsn: lsn(r)?,
                end_lsn: lsn(r)?,
                prepare_time: r.i64()?,
                xid: r.u32()?,
                gid: r.cstr()?,
            }),
            b'P' => Message::Prepare(prepare(r)?),
            b'p' => Message::StreamPrepare(prepare(r)?),
            b'K' => Message::CommitPrepared(CommitPrepared {
                flags: r.u8()?,
                commit_lsn: lsn(r)?,
                end_lsn: lsn(r)?,
                commit_time: r.i64()?,
                xid: r.u32()?,
                gid: r.cstr()?,
            }),
            b'r' => Message::RollbackPrepared(RollbackPrepared {
                flags: r.u8()?,
                prepare_end_lsn: lsn(r)?,
                rollback_end_lsn: lsn(r)?,
                prepare_time: r.i64()?,
                rollback_time: r.i64()?,
                xid: r.u32()?,
                gid: r.cstr()?,
            }),
            other => {
                return Err(DecodeError::new(DecodeErrorKind::UnknownTag(other), 0));
            }
        })
    }

    /// The same checks as Postgres's apply worker (`worker.c`) makes on these messages.
    fn stream_violation(&self, tag: u8) -> Option<&'static str> {
        match (tag, self.in_stream) {
            (b'S', true) => Some("Stream Start inside a streamed block (duplicate Stream Start)"),
            (b'E', false) => Some("Stream Stop without Stream Start"),
            (b'c', true) => Some("Stream Commit inside a streamed block (no Stream Stop)"),
            (b'A', true) => Some("Stream Abort inside a streamed block (no Stream Stop)"),
            (b'p', true) => Some("Stream Prepare inside a streamed block (no Stream Stop)"),
            _ => None,
        }
    }

    /// The xid that data messages carry inside a streamed block.
    fn stream_xid(&self, r: &mut Reader<'_>) -> Result<Option<Xid>, DecodeError> {
        if self.in_stream {
            Ok(Some(r.u32()?))
        } else {
            Ok(None)
        }
    }

    /// Reads a relation id that must be cached; returns it with its column count.
    fn known_relation(&self, r: &mut Reader<'_>) -> Result<(RelId, usize), DecodeError> {
        let at = r.offset();
        let id = r.u32()?;
        match self.relations.get(id) {
            Some(rel) => Ok((id, rel.columns.len())),
            None => Err(DecodeError::new(DecodeErrorKind::UnknownRelation(id), at)),
        }
    }

    fn relation(&self, r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
        let xid = self.stream_xid(r)?;
        let id = r.u32()?;
        let namespace = r.cstr()?;
        let name = r.cstr()?;
        let at = r.offset();
        let replica_identity = match r.u8()? {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => {
                return Err(DecodeError::new(
                    DecodeErrorKind::UnknownReplicaIdentity(other),
                    at,
                ));
            }
        };
        let n = usize::from(r.u16()?);
        let mut columns = Vec::with_capacity(n.min(r.remaining() / MIN_COLUMN_LEN));
        for _ in 0..n {
            columns.push(Column {
                is_key: r.u8()? & 1 != 0,
                name: r.cstr()?,
                type_oid: r.u32()?,
                type_modifier: r.i32()?,
            });
        }
        Ok(Relation {
            xid,
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }
}

fn lsn(r: &mut Reader<'_>) -> Result<Lsn, DecodeError> {
    Ok(Lsn(r.u64()?))
}

/// An `Int32` count of items of at least `item_len` bytes each; negative is an error.
fn count(r: &mut Reader<'_>, item_len: usize) -> Result<usize, DecodeError> {
    let at = r.offset();
    let n = r.i32()?;
    let invalid = || DecodeError::new(DecodeErrorKind::InvalidLength(i64::from(n)), at);
    let n = usize::try_from(n).map_err(|_| invalid())?;
    // A count the rest of the message cannot hold is a length error, reported at the
    // count rather than after reading as many items as fit.
    if n.saturating_mul(item_len) > r.remaining() {
        return Err(invalid());
    }
    Ok(n)
}

fn expect_marker(r: &mut Reader<'_>, marker: u8) -> Result<(), DecodeError> {
    let at = r.offset();
    match r.u8()? {
        m if m == marker => Ok(()),
        other => Err(DecodeError::new(
            DecodeErrorKind::UnknownOldTupleKind(other),
            at,
        )),
    }
}

/// `TupleData` of a relation with `columns` columns.
fn tuple(r: &mut Reader<'_>, rel_id: RelId, columns: usize) -> Result<TupleData, DecodeError> {
    let at = r.offset();
    let n = usize::from(r.u16()?);
    if n != columns {
        return Err(DecodeError::new(
            DecodeErrorKind::ColumnCountMismatch {
                rel_id,
                expected: columns,
                got: n,
            },
            at,
        ));
    }
    // Every column takes at least its kind byte.
    let mut values = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        let at = r.offset();
        values.push(match r.u8()? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            b't' => TupleValue::Text(r.len_prefixed()?),
            b'b' => TupleValue::Binary(r.len_prefixed()?),
            other => {
                return Err(DecodeError::new(
                    DecodeErrorKind::UnknownTupleKind(other),
                    at,
                ));
            }
        });
    }
    Ok(values)
}

fn prepare(r: &mut Reader<'_>) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: r.u8()?,
        prepare_lsn: lsn(r)?,
        end_lsn: lsn(r)?,
        prepare_time: r.i64()?,
        xid: r.u32()?,
        gid: r.cstr()?,
    })
}
