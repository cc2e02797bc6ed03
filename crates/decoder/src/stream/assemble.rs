//! Transaction assembly: transport events in, bounded chunks of typed changes out.
//!
//! Sans-IO like the decoder, so every resume rule is unit-tested without a server.
//!
//! A transaction is handed on as one or more [`TxnChunk`]s of at most `max_changes`
//! changes / `max_bytes` bytes, so a million-row transaction never sits in memory whole.
//! The last chunk carries the commit's `end_lsn`.
//!
//! **Resume.** After a reconnect the server replays from the last acknowledged position,
//! which may be behind what this process already handed on (the consumer has not made it
//! durable yet, or a crashed server lost the slot's newest confirmed position). The
//! assembler remembers what it delivered: whole transactions up to `delivered_end`, and for
//! a transaction cut off mid-way, how many of its changes went out. Redelivered
//! transactions and changes are dropped, so within one process every change reaches the
//! consumer exactly once, across any number of reconnects. This relies on logical decoding
//! being deterministic: a transaction's changes come in the same order every time.

use std::sync::Arc;

use bytes::Bytes;

use crate::Lsn;
use crate::pgoutput::{Decoder, LogicalMessage, Message, OldTuple, Relation, TupleData, Xid};

use super::error::StreamError;

/// The identity of a transaction being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnInfo {
    /// Transaction id.
    pub xid: Xid,
    /// The LSN of its commit record: the transaction's identity.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// The end of a transaction, on its last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnEnd {
    /// The end of the commit record: acknowledge this once the transaction is durable.
    pub end_lsn: Lsn,
    /// How many changes the transaction had in all.
    pub change_count: u64,
}

/// A piece of a transaction: consecutive changes, the last piece with the commit.
#[derive(Debug, Clone)]
pub struct TxnChunk {
    /// Which transaction.
    pub txn: TxnInfo,
    /// The position of `changes[0]` inside the transaction (0 for its first change).
    pub first_seq: u64,
    /// The changes, in commit order.
    pub changes: Vec<Change>,
    /// Set on the last chunk of the transaction.
    pub end: Option<TxnEnd>,
    /// Wire bytes of its changes (what a consumer holding chunks bounds its memory by).
    pub bytes: usize,
}

/// One row-level (or message) change of a transaction.
#[derive(Debug, Clone)]
pub struct Change {
    /// The WAL position of the change.
    pub lsn: Lsn,
    /// What changed.
    pub kind: ChangeKind,
}

/// What a change did. Tuples are raw wire values; type them with
/// [`Value::from_tuple`](crate::pgoutput::Value::from_tuple) and the relation's column types.
#[derive(Debug, Clone)]
pub enum ChangeKind {
    /// A row was inserted.
    Insert {
        /// The relation as it was when the change was made.
        relation: Arc<Relation>,
        /// The new row.
        new: TupleData,
    },
    /// A row was updated.
    Update {
        /// The relation as it was when the change was made.
        relation: Arc<Relation>,
        /// The old key or row, when Postgres sent one.
        old: Option<OldTuple>,
        /// The new row (unchanged TOASTed columns marked as such).
        new: TupleData,
    },
    /// A row was deleted.
    Delete {
        /// The relation as it was when the change was made.
        relation: Arc<Relation>,
        /// The old key or row.
        old: OldTuple,
    },
    /// Tables were truncated.
    Truncate {
        /// The truncated relations.
        relations: Vec<Arc<Relation>>,
        /// `CASCADE` was given.
        cascade: bool,
        /// `RESTART IDENTITY` was given.
        restart_identity: bool,
    },
    /// A transactional logical decoding message.
    Message(LogicalMessage),
}

/// One event from the transport, independent of its types so tests can build them.
#[derive(Debug, Clone)]
pub(crate) enum WireEvent {
    Begin {
        final_lsn: Lsn,
        xid: Xid,
        commit_time: i64,
    },
    Data {
        wal_start: Lsn,
        data: Bytes,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// What the assembler hands on.
#[derive(Debug, Clone)]
pub(crate) enum Assembled {
    Chunk(TxnChunk),
    Message(LogicalMessage),
}

/// Limits on one chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkLimits {
    pub max_changes: usize,
    pub max_bytes: usize,
}

#[derive(Debug)]
struct OpenTxn {
    info: TxnInfo,
    /// Changes seen so far in this session, including skipped ones.
    seq: u64,
    /// Changes with `seq < skip_below` were delivered before a reconnect.
    skip_below: u64,
    /// The whole transaction was delivered before.
    skip_all: bool,
    chunk: Vec<Change>,
    chunk_first_seq: u64,
    chunk_bytes: usize,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Assembler {
    decoder: Decoder,
    limits: ChunkLimits,
    open: Option<OpenTxn>,
    /// Everything before this was delivered (end of the last delivered transaction).
    delivered_end: Lsn,
    /// A transaction delivered in part: its commit LSN and how many changes went out.
    partial: Option<(Lsn, u64)>,
}

impl Assembler {
    pub(crate) fn new(limits: ChunkLimits, resume_from: Lsn) -> Assembler {
        Assembler {
            decoder: Self::session_decoder(),
            limits,
            open: None,
            delivered_end: resume_from,
            partial: None,
        }
    }

    fn session_decoder() -> Decoder {
        // The transport speaks protocol version 1 (see shared/notes/pgwire-replication.md);
        // `new(1)` cannot fail.
        Decoder::new(1).unwrap_or_else(|_| unreachable!("protocol version 1 is supported"))
    }

    /// A new replication session starts: Postgres sends Relation messages again before
    /// first use, and whatever was buffered but not delivered will come again.
    pub(crate) fn new_session(&mut self) {
        self.decoder = Self::session_decoder();
        self.open = None;
    }

    /// No transaction is open (nothing buffered that is not handed on).
    pub(crate) fn between_transactions(&self) -> bool {
        self.open.is_none()
    }

    /// The end of the last transaction handed on whole.
    pub(crate) fn delivered_end(&self) -> Lsn {
        self.delivered_end
    }

    /// Feed one transport event; returns what is ready to hand on, if anything.
    pub(crate) fn push(&mut self, ev: WireEvent) -> Result<Option<Assembled>, StreamError> {
        match ev {
            WireEvent::Begin {
                final_lsn,
                xid,
                commit_time,
            } => {
                if let Some(open) = &self.open {
                    return Err(StreamError::Protocol(format!(
                        "Begin of transaction {xid} at {final_lsn} while transaction {} at {} is still open",
                        open.info.xid, open.info.commit_lsn
                    )));
                }
                let skip_all = final_lsn < self.delivered_end;
                let skip_below = match self.partial {
                    Some((lsn, n)) if lsn == final_lsn => n,
                    _ => 0,
                };
                self.open = Some(OpenTxn {
                    info: TxnInfo {
                        xid,
                        commit_lsn: final_lsn,
                        commit_time,
                    },
                    seq: 0,
                    skip_below,
                    skip_all,
                    chunk: Vec::new(),
                    chunk_first_seq: skip_below,
                    chunk_bytes: 0,
                });
                Ok(None)
            }
            WireEvent::Data { wal_start, data } => {
                let len = data.len();
                let msg = self.decoder.decode(&data)?;
                let kind = match self.change_kind(msg)? {
                    Some(kind) => kind,
                    None => return Ok(None),
                };
                self.add_change(
                    Change {
                        lsn: wal_start,
                        kind,
                    },
                    len,
                )
            }
            WireEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                let msg = LogicalMessage {
                    xid: None,
                    transactional,
                    lsn,
                    prefix,
                    content,
                };
                if transactional && self.open.is_some() {
                    let len = msg.content.len() + msg.prefix.len();
                    return self.add_change(
                        Change {
                            lsn,
                            kind: ChangeKind::Message(msg),
                        },
                        len,
                    );
                }
                if self.open.is_some() {
                    return Err(StreamError::Protocol(format!(
                        "non-transactional message at {lsn} inside a transaction"
                    )));
                }
                // `lsn` is the end of the message's record (Postgres decodes a message at
                // its end pointer, as `pg_logical_emit_message` returns it): the next
                // record — a transaction's commit, say — may start exactly there, so
                // only `lsn` itself is behind us (a commit at `lsn` must still come
                // through; this message, sent again after a reconnect, must not).
                if lsn <= self.delivered_end {
                    return Ok(None);
                }
                self.delivered_end = self.delivered_end.max(lsn);
                Ok(Some(Assembled::Message(msg)))
            }
            WireEvent::Commit {
                commit_lsn,
                end_lsn,
            } => {
                let Some(open) = self.open.take() else {
                    return Err(StreamError::Protocol(format!(
                        "Commit at {commit_lsn} without a Begin"
                    )));
                };
                if open.info.commit_lsn != commit_lsn {
                    return Err(StreamError::Protocol(format!(
                        "Commit at {commit_lsn} does not match Begin's final LSN {}",
                        open.info.commit_lsn
                    )));
                }
                if open.skip_all {
                    return Ok(None);
                }
                self.delivered_end = end_lsn;
                self.partial = None;
                Ok(Some(Assembled::Chunk(TxnChunk {
                    txn: open.info,
                    first_seq: open.chunk_first_seq,
                    changes: open.chunk,
                    end: Some(TxnEnd {
                        end_lsn,
                        change_count: open.seq,
                    }),
                    bytes: open.chunk_bytes,
                })))
            }
        }
    }

    fn change_kind(&self, msg: Message) -> Result<Option<ChangeKind>, StreamError> {
        let rel = |id| {
            self.decoder.relations().get(id).cloned().ok_or_else(|| {
                StreamError::Protocol(format!(
                    "change for relation {id} before its Relation message"
                ))
            })
        };
        Ok(Some(match msg {
            Message::Insert(i) => ChangeKind::Insert {
                relation: rel(i.rel_id)?,
                new: i.new,
            },
            Message::Update(u) => ChangeKind::Update {
                relation: rel(u.rel_id)?,
                old: u.old,
                new: u.new,
            },
            Message::Delete(d) => ChangeKind::Delete {
                relation: rel(d.rel_id)?,
                old: d.old,
            },
            Message::Truncate(t) => ChangeKind::Truncate {
                relations: t
                    .rel_ids
                    .iter()
                    .map(|&id| rel(id))
                    .collect::<Result<_, _>>()?,
                cascade: t.cascade,
                restart_identity: t.restart_identity,
            },
            Message::Message(m) if m.transactional => ChangeKind::Message(m),
            // Relation and Type update the decoder's cache; Origin is informational.
            Message::Relation(_) | Message::Type(_) | Message::Origin(_) => return Ok(None),
            other => {
                return Err(StreamError::Protocol(format!(
                    "unexpected message in a protocol v1 stream: {other:?}"
                )));
            }
        }))
    }

    fn add_change(&mut self, change: Change, len: usize) -> Result<Option<Assembled>, StreamError> {
        let Some(open) = self.open.as_mut() else {
            return Err(StreamError::Protocol(format!(
                "change at {} outside a transaction",
                change.lsn
            )));
        };
        let seq = open.seq;
        open.seq += 1;
        if open.skip_all || seq < open.skip_below {
            return Ok(None);
        }
        open.chunk.push(change);
        open.chunk_bytes += len;
        if open.chunk.len() < self.limits.max_changes && open.chunk_bytes < self.limits.max_bytes {
            return Ok(None);
        }
        let changes = std::mem::take(&mut open.chunk);
        let first_seq = open.chunk_first_seq;
        open.chunk_first_seq = open.seq;
        let bytes = std::mem::take(&mut open.chunk_bytes);
        self.partial = Some((open.info.commit_lsn, open.seq));
        Ok(Some(Assembled::Chunk(TxnChunk {
            txn: open.info,
            first_seq,
            changes,
            end: None,
            bytes,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ChunkLimits = ChunkLimits {
        max_changes: 3,
        max_bytes: usize::MAX,
    };

    /// pgoutput `R` for relation 16384 `public.t(id int4 key)`.
    fn relation() -> Bytes {
        let mut b = vec![b'R'];
        b.extend_from_slice(&16384u32.to_be_bytes());
        b.extend_from_slice(b"public\0t\0");
        b.push(b'd');
        b.extend_from_slice(&1i16.to_be_bytes());
        b.push(1);
        b.extend_from_slice(b"id\0");
        b.extend_from_slice(&23u32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(b)
    }

    /// pgoutput `I` of `(id)` into relation 16384.
    fn insert(id: i32) -> Bytes {
        let text = id.to_string();
        let mut b = vec![b'I'];
        b.extend_from_slice(&16384u32.to_be_bytes());
        b.push(b'N');
        b.extend_from_slice(&1i16.to_be_bytes());
        b.push(b't');
        b.extend_from_slice(&(text.len() as i32).to_be_bytes());
        b.extend_from_slice(text.as_bytes());
        Bytes::from(b)
    }

    /// The events of one transaction with `n` inserts, commit at `commit`.
    fn txn(commit: u64, n: i32) -> Vec<WireEvent> {
        let mut evs = vec![
            WireEvent::Begin {
                final_lsn: Lsn(commit),
                xid: commit as u32,
                commit_time: 0,
            },
            WireEvent::Data {
                wal_start: Lsn(commit - 100),
                data: relation(),
            },
        ];
        for i in 0..n {
            evs.push(WireEvent::Data {
                wal_start: Lsn(commit - 50 + i as u64),
                data: insert(i),
            });
        }
        evs.push(WireEvent::Commit {
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(commit + 8),
        });
        evs
    }

    fn feed(a: &mut Assembler, evs: Vec<WireEvent>) -> Vec<TxnChunk> {
        evs.into_iter()
            .filter_map(|e| a.push(e).unwrap())
            .map(|x| match x {
                Assembled::Chunk(c) => c,
                Assembled::Message(m) => panic!("unexpected message {m:?}"),
            })
            .collect()
    }

    fn ids(chunks: &[TxnChunk]) -> Vec<(u64, u64)> {
        chunks
            .iter()
            .flat_map(|c| {
                c.changes
                    .iter()
                    .enumerate()
                    .map(move |(i, _)| (c.txn.commit_lsn.0, c.first_seq + i as u64))
            })
            .collect()
    }

    #[test]
    fn large_transactions_come_in_bounded_chunks() {
        let mut a = Assembler::new(LIMITS, Lsn::ZERO);
        let chunks = feed(&mut a, txn(1000, 7));
        assert_eq!(
            chunks.iter().map(|c| c.changes.len()).collect::<Vec<_>>(),
            [3, 3, 1]
        );
        assert_eq!(
            chunks.iter().map(|c| c.first_seq).collect::<Vec<_>>(),
            [0, 3, 6]
        );
        assert!(chunks[..2].iter().all(|c| c.end.is_none()));
        assert_eq!(
            chunks[2].end,
            Some(TxnEnd {
                end_lsn: Lsn(1008),
                change_count: 7
            })
        );
        assert_eq!(a.delivered_end(), Lsn(1008));
    }

    #[test]
    fn empty_transactions_still_end() {
        let mut a = Assembler::new(LIMITS, Lsn::ZERO);
        let chunks = feed(&mut a, txn(1000, 0));
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].changes.is_empty());
        assert_eq!(chunks[0].end.map(|e| e.end_lsn), Some(Lsn(1008)));
    }

    #[test]
    fn redelivered_transactions_are_dropped_after_reconnect() {
        let mut a = Assembler::new(LIMITS, Lsn::ZERO);
        let first = feed(&mut a, [txn(1000, 2), txn(2000, 2)].concat());
        assert_eq!(ids(&first).len(), 4);
        // The server lost our acknowledgement and sends both again, then a new one.
        a.new_session();
        let again = feed(&mut a, [txn(1000, 2), txn(2000, 2), txn(3000, 1)].concat());
        assert_eq!(ids(&again), [(3000, 0)]);
    }

    #[test]
    fn a_transaction_cut_mid_way_resumes_after_its_delivered_changes() {
        let mut a = Assembler::new(LIMITS, Lsn::ZERO);
        let mut evs = txn(1000, 8);
        evs.truncate(2 + 7); // Begin, Relation, 7 inserts: two chunks of 3 went out
        let before = feed(&mut a, evs);
        assert_eq!(ids(&before).len(), 6);
        a.new_session();
        let after = feed(&mut a, txn(1000, 8));
        assert_eq!(ids(&after), [(1000, 6), (1000, 7)]);
        assert_eq!(
            after.last().and_then(|c| c.end).map(|e| e.change_count),
            Some(8)
        );
        let all: Vec<_> = [ids(&before), ids(&after)].concat();
        assert_eq!(all, (0..8).map(|s| (1000, s)).collect::<Vec<_>>());
    }

    #[test]
    fn resume_point_skips_older_transactions() {
        let mut a = Assembler::new(LIMITS, Lsn(1008));
        let chunks = feed(&mut a, [txn(1000, 1), txn(2000, 1)].concat());
        assert_eq!(ids(&chunks), [(2000, 0)]);
    }

    #[test]
    fn non_transactional_messages_pass_once() {
        let mut a = Assembler::new(LIMITS, Lsn::ZERO);
        let msg = || WireEvent::Message {
            transactional: false,
            lsn: Lsn(500),
            prefix: "p".into(),
            content: Bytes::from_static(b"c"),
        };
        assert!(matches!(
            a.push(msg()).unwrap(),
            Some(Assembled::Message(_))
        ));
        a.new_session();
        assert!(a.push(msg()).unwrap().is_none());
    }

    /// A commit record right after a message record starts at the message's LSN (its
    /// end): that transaction is new and must come through.
    #[test]
    fn a_commit_right_after_a_message_comes_through() {
        let mut a = Assembler::new(LIMITS, Lsn::ZERO);
        let msg = WireEvent::Message {
            transactional: false,
            lsn: Lsn(1000),
            prefix: "p".into(),
            content: Bytes::from_static(b"c"),
        };
        assert!(a.push(msg).unwrap().is_some());
        let chunks = feed(&mut a, txn(1000, 2));
        assert_eq!(ids(&chunks), [(1000, 0), (1000, 1)]);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut a = Assembler::new(LIMITS, Lsn::ZERO);
        assert!(
            a.push(WireEvent::Data {
                wal_start: Lsn(1),
                data: insert(1)
            })
            .is_err()
        );
        let mut a = Assembler::new(LIMITS, Lsn::ZERO);
        let mut evs = txn(1000, 1);
        evs.pop();
        feed(&mut a, evs);
        assert!(
            a.push(WireEvent::Commit {
                commit_lsn: Lsn(999),
                end_lsn: Lsn(1),
            })
            .is_err()
        );
    }
}
