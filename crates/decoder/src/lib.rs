//! pgprism's decoder: `pgoutput` bytes to typed changes, and the replication stream that feeds it.
//!
//! - [`pgoutput`] is sans-IO: functions from bytes to messages, a relation cache, typed values.
//!   It never touches a socket and never panics on malformed input.
//! - [`stream`] is the replication session over `pgwire-replication`: checks, slot and
//!   publication management, `START_REPLICATION`, transaction assembly in bounded chunks,
//!   acknowledgements and reconnects.

mod lsn;
pub mod pgoutput;
pub mod stream;

pub use lsn::{Lsn, LsnParseError};
