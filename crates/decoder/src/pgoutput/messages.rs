//! The messages of the `pgoutput` protocol, as typed values.
//!
//! Field names follow the Postgres documentation ("Logical Replication Message Formats").
//! Times are Postgres timestamps: microseconds since 2000-01-01 00:00:00 UTC.

use bytes::Bytes;

use crate::Lsn;

/// A relation (table) identifier as sent by Postgres: the table's OID.
pub type RelId = u32;

/// A transaction id.
pub type Xid = u32;

/// One decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `B`: start of a (non-streamed) transaction.
    Begin(Begin),
    /// `C`: end of a (non-streamed) transaction.
    Commit(Commit),
    /// `O`: the replication origin the transaction came from.
    Origin(Origin),
    /// `R`: the shape of a relation; replaces any cached shape for its id.
    Relation(Relation),
    /// `Y`: a data type's name, sent before a Relation that uses a non-builtin type.
    Type(TypeInfo),
    /// `I`: a new row.
    Insert(Insert),
    /// `U`: a changed row.
    Update(Update),
    /// `D`: a deleted row.
    Delete(Delete),
    /// `T`: one or more tables truncated together.
    Truncate(Truncate),
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
    /// `S` (v2+): start of a block of a streamed in-progress transaction.
    StreamStart(StreamStart),
    /// `E` (v2+): end of a block of a streamed transaction.
    StreamStop,
    /// `c` (v2+): a streamed transaction committed.
    StreamCommit(StreamCommit),
    /// `A` (v2+): a streamed (sub)transaction aborted.
    StreamAbort(StreamAbort),
    /// `b` (v3+): start of a prepared transaction.
    BeginPrepare(BeginPrepare),
    /// `P` (v3+): a transaction was prepared (`PREPARE TRANSACTION`).
    Prepare(Prepare),
    /// `K` (v3+): a prepared transaction committed (`COMMIT PREPARED`).
    CommitPrepared(CommitPrepared),
    /// `r` (v3+): a prepared transaction rolled back (`ROLLBACK PREPARED`).
    RollbackPrepared(RollbackPrepared),
    /// `p` (v3+): a streamed transaction was prepared.
    StreamPrepare(Prepare),
}

/// `B`: Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record (its identity in pgprism).
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: Xid,
}

/// `C`: Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently unused by Postgres, always 0).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: where to resume after this transaction.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// `O`: Origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: String,
}

/// The replica identity setting of a relation (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing; updates and deletes carry no old values.
    Nothing,
    /// `f`: all columns; updates and deletes carry the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The setting's name as in `ALTER TABLE … REPLICA IDENTITY`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaIdentity::Default => "default",
            ReplicaIdentity::Nothing => "nothing",
            ReplicaIdentity::Full => "full",
            ReplicaIdentity::Index => "index",
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Whether the column is part of the replica identity key.
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// The column's data type OID.
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), -1 if none.
    pub type_modifier: i32,
}

/// `R`: Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Set inside a streamed transaction block (v2+).
    pub xid: Option<Xid>,
    /// Relation OID.
    pub id: RelId,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in attribute order, dropped and generated columns excluded.
    pub columns: Vec<Column>,
}

/// `Y`: Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Set inside a streamed transaction block (v2+).
    pub xid: Option<Xid>,
    /// The type's OID.
    pub oid: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column of a tuple as it came over the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value; the actual value was not sent.
    UnchangedToast,
    /// `t`: the value in its text form.
    Text(Bytes),
    /// `b`: the value in its binary (send/recv) form.
    Binary(Bytes),
}

/// A row: one [`TupleValue`] per column of the relation, in column order.
pub type TupleData = Vec<TupleValue>;

/// What an Update or Delete carries about the old row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are meaningful (others are null).
    Key(TupleData),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple data, key-only or full.
    pub fn data(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `I`: Insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Set inside a streamed transaction block (v2+).
    pub xid: Option<Xid>,
    /// The relation's OID.
    pub rel_id: RelId,
    /// The new row.
    pub new: TupleData,
}

/// `U`: Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Set inside a streamed transaction block (v2+).
    pub xid: Option<Xid>,
    /// The relation's OID.
    pub rel_id: RelId,
    /// The old key (if the key changed) or the whole old row (REPLICA IDENTITY FULL).
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are [`TupleValue::UnchangedToast`].
    pub new: TupleData,
}

/// `D`: Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Set inside a streamed transaction block (v2+).
    pub xid: Option<Xid>,
    /// The relation's OID.
    pub rel_id: RelId,
    /// The old key or the whole old row.
    pub old: OldTuple,
}

/// `T`: Truncate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Set inside a streamed transaction block (v2+).
    pub xid: Option<Xid>,
    /// `TRUNCATE … CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The truncated relations' OIDs.
    pub rel_ids: Vec<RelId>,
}

/// `M`: a logical decoding message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Set inside a streamed transaction block (v2+).
    pub xid: Option<Xid>,
    /// Whether the message was emitted as part of a transaction.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The message's prefix.
    pub prefix: String,
    /// The message's content, arbitrary bytes.
    pub content: Bytes,
}

/// `S`: Stream Start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The streamed transaction's id.
    pub xid: Xid,
    /// Whether this is the first block of that transaction.
    pub first_segment: bool,
}

/// `c`: Stream Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    /// The streamed transaction's id.
    pub xid: Xid,
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// `A`: Stream Abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction's id.
    pub xid: Xid,
    /// The aborted subtransaction's id (equal to `xid` for the top level).
    pub subxid: Xid,
    /// v4 with parallel streaming: the abort's LSN and time.
    pub abort: Option<AbortInfo>,
}

/// The LSN and time of an abort (protocol v4, `streaming = parallel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortInfo {
    /// The LSN of the abort record.
    pub abort_lsn: Lsn,
    /// Abort time, microseconds since 2000-01-01 UTC.
    pub abort_time: i64,
}

/// `b`: Begin Prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// The LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// The end of the prepared transaction.
    pub end_lsn: Lsn,
    /// Prepare time, microseconds since 2000-01-01 UTC.
    pub prepare_time: i64,
    /// Transaction id.
    pub xid: Xid,
    /// The global identifier given to `PREPARE TRANSACTION`.
    pub gid: String,
}

/// `P` (Prepare) and `p` (Stream Prepare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// The LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// The end of the prepared transaction.
    pub end_lsn: Lsn,
    /// Prepare time, microseconds since 2000-01-01 UTC.
    pub prepare_time: i64,
    /// Transaction id.
    pub xid: Xid,
    /// The global identifier.
    pub gid: String,
}

/// `K`: Commit Prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// The LSN of the commit prepared record.
    pub commit_lsn: Lsn,
    /// The end of the commit prepared record.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: Xid,
    /// The global identifier.
    pub gid: String,
}

/// `r`: Rollback Prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// The end LSN of the prepared transaction.
    pub prepare_end_lsn: Lsn,
    /// The end LSN of the rollback prepared record.
    pub rollback_end_lsn: Lsn,
    /// Prepare time, microseconds since 2000-01-01 UTC.
    pub prepare_time: i64,
    /// Rollback time, microseconds since 2000-01-01 UTC.
    pub rollback_time: i64,
    /// Transaction id.
    pub xid: Xid,
    /// The global identifier.
    pub gid: String,
}
