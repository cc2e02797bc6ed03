//! Projections: decoded changes in, read models out, in Postgres tables and Redis keys.
//!
//! Delivery contract: a sink may receive the same changes again after a crash, a
//! reconnect or a replay, and must end up exactly as if it had received them once.
//! - Postgres targets apply a batch, its dead letters and the fenced offset update in one
//!   transaction; the offset says which changes to skip on redelivery.
//! - Redis targets guard every key with the position of the change it carries (Lua,
//!   atomic per call); a key never moves back in time, and the offset moves after the batch.
//! - Every write goes through the leader's fence: a deposed leader's batch is refused.
//!
//! Modules: [`spec`] (configuration), [`batch`] (coalesced operations), [`mirror`] and
//! [`query`] (change → operations), [`postgres`] and [`redis`] (writers), [`dead_letter`],
//! [`adaptive`] (batch sizing), [`projector`] (routing, flushing, offsets), [`replay`]
//! (rewinding targets under a new epoch), [`drive`]
//! (the loop from a replication stream).

pub mod adaptive;
pub mod backfill;
pub mod batch;
pub mod dead_letter;
pub mod drive;
mod error;
mod lane;
pub mod mirror;
pub mod postgres;
pub mod projector;
pub mod query;
pub mod rebuild;
pub mod redis;
pub mod replay;
pub mod spec;
pub mod status;

pub use error::{Class, SinkError, pg_class, redis_class, sqlstate};
pub use lane::LaneFlush;
pub use projector::{FlushReport, LagClock, Projector, ProjectorConfig, TargetStatus};
