//! Coordination of pgprism replicas: exactly one leads, and a deposed leader can never
//! overwrite newer data.
//!
//! - [`election`]: every replica holds a dedicated session to the source and tries
//!   `pg_try_advisory_lock(key)`; the holder leads. On taking the lock it allocates a new
//!   **epoch** (monotonic, in `pgprism.pipelines` on the source) and keeps a heartbeat.
//!   A standby that sees the heartbeat older than `takeover_after` terminates the holder's
//!   backend (a leader frozen by SIGSTOP or a hung disk still holds its lock) and takes over.
//!   A leader whose lock session ends, or whose epoch was superseded, is told at once.
//! - [`fence`]: the offsets store in each Postgres sink and the fence every sink commit
//!   goes through: the offset row carries the epoch of the leader that last wrote it; a new
//!   leader stamps its epoch on the row before reading it, and a commit updates the row only
//!   `WHERE epoch <= mine`, in the same transaction as the rows it covers. A paused old
//!   leader that wakes up finds a newer epoch, its transaction rolls back, and it steps down.
//!
//! - [`slot`]: taking the replication slot over from a dead leader's walsender, the
//!   oldest LSN a replay can reach, and the acknowledgement held back by the replay window.
//!
//! - [`redis_fence`]: the same for a Redis sink, in Lua scripts Redis runs atomically.
//!
//! Being told "you lost" is an optimisation: the fence is what makes stale writes
//! impossible, because it is checked by the sink's own transaction, not by the replica.

pub mod election;
mod error;
pub mod fence;
pub mod redis_fence;
pub mod schema;
pub mod slot;

pub use election::{
    Election, LeaderConfig, Leadership, Succession, Via, hold_offsets, lock_key, supersede,
    wait_for_offsets,
};
pub use error::LeaderError;
pub use fence::{Offset, PgFence};
pub use redis_fence::RedisFence;

/// A leader's term. Each new leader of a pipeline gets a larger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub i64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
