//! Sans-IO decoding of the `pgoutput` logical replication protocol, versions 1 to 4.
//!
//! Bytes in, typed messages out: no sockets, no async, no tokio. Incomplete or malformed
//! input is an error value carrying what was wrong and at which byte offset; nothing here
//! panics on any input (property tests and a fuzz target hold us to that).
//!
//! The [`Decoder`] keeps the two pieces of protocol state that decoding needs:
//! - whether we are inside a streamed-transaction block (v2+: between Stream Start and
//!   Stream Stop every data message carries the xid of its top-level transaction), and
//! - the [`RelationCache`]: tuple data carries no column names or types, those come from
//!   the last Relation message for that relation id, which replaces any earlier one.
//!
//! Typed values ([`Value`]) are derived from a column's type OID and its text (or binary)
//! form. Anything not known by OID (enums, domains, composite types, extension types)
//! keeps its Postgres text form.

mod decode;
#[cfg(test)]
mod encode;
mod error;
mod messages;
mod reader;
mod relation;
#[cfg(test)]
mod tests;
mod value;

pub use decode::Decoder;
pub use error::{DecodeError, DecodeErrorKind};
pub use messages::*;
pub use relation::RelationCache;
pub use value::{
    ArrayValue, Interval, Numeric, PgDate, PgTime, PgTimestamp, TimeTz, Value, ValueError, oid,
    write_json_str,
};
