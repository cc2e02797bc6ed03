//! pgprism's decoder: `pgoutput` bytes to typed changes, and the replication stream that feeds it.
//!
//! - [`pgoutput`] is sans-IO: functions from bytes to messages, a relation cache, typed values.
//!   It never touches a socket and never panics on malformed input.
//! - [`stream`] is the replication session over `pgwire-replication`: checks, slot and
//!   publication management, `START_REPLICATION`, transaction assembly in bounded chunks,
//!   acknowledgements and reconnects. It is the default feature `stream`; without it
//!   (`default-features = false`, as the fuzz target builds) the crate is the decoder
//!   and [`Lsn`] only, with no tokio, no sockets and no TLS.

mod lsn;
pub mod pgoutput;
#[cfg(feature = "stream")]
pub mod stream;

pub use lsn::{Lsn, LsnParseError};
