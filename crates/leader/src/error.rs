//! What can go wrong in coordination.

use pgprism_decoder::Lsn;

use crate::Epoch;

/// Errors of the election and the fence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaderError {
    /// A newer leader exists: roll back, stop writing, step down.
    #[error(
        "fenced: sink {sink:?} of pipeline {pipeline:?} belongs to epoch {current}, ours is {ours}; stepping down"
    )]
    Fenced {
        /// The pipeline.
        pipeline: String,
        /// The sink.
        sink: String,
        /// Our epoch.
        ours: Epoch,
        /// The epoch on the sink's offset row.
        current: Epoch,
    },
    /// A commit would move a sink's offset backwards (only a replay may).
    #[error(
        "offset of sink {sink:?} would move backwards from {from} to {to}; only `pgprism replay` rewinds offsets"
    )]
    Backwards {
        /// The sink.
        sink: String,
        /// The stored position.
        from: String,
        /// The position we tried to store.
        to: String,
    },
    /// Two pipelines derive the same advisory lock key.
    #[error(
        "pipelines {ours:?} and {other:?} share the advisory lock key {key}; set leader.lock_key for one of them"
    )]
    LockKeyCollision {
        /// The key.
        key: i64,
        /// Our pipeline.
        ours: String,
        /// The pipeline already registered under the key.
        other: String,
    },
    /// A database error.
    #[error("{context}: {}", pgprism_pg::error_text(source))]
    Db {
        /// What we were doing.
        context: &'static str,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A replay asked for WAL the slot no longer holds.
    #[error(
        "cannot replay from {from}: slot {slot:?} can replay only from {oldest} on (its confirmed position); \
         to go further back, rebuild the read models from a new slot and snapshot"
    )]
    NotReplayable {
        /// The slot.
        slot: String,
        /// The requested LSN.
        from: Lsn,
        /// The oldest LSN the slot can still replay from.
        oldest: Lsn,
    },
    /// A Redis error.
    #[error("{context}: {message}")]
    Redis {
        /// What we were doing.
        context: &'static str,
        /// The error.
        message: String,
    },
    /// The offset row holds a value we cannot read.
    #[error("corrupt offset row for sink {sink:?}: {detail}")]
    Corrupt {
        /// The sink.
        sink: String,
        /// What is wrong.
        detail: String,
    },
}

impl LeaderError {
    /// Wrap a database error with what we were doing.
    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> LeaderError {
        move |source| LeaderError::Db { context, source }
    }

    /// A database error that retrying will not fix: TLS that cannot be set up, a refused
    /// login, a missing database ([`pgprism_pg::is_misconfiguration`]).
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, LeaderError::Db { source, .. } if pgprism_pg::is_misconfiguration(source))
    }
}

/// Format a position for messages.
pub(crate) fn position(lsn: Lsn, changes: i64) -> String {
    if changes == 0 {
        lsn.to_string()
    } else {
        format!("{lsn}+{changes}")
    }
}
