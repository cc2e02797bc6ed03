//! Errors of the replication session, and the one function that decides whether one is
//! worth retrying.
//!
//! The decision is made from the SQLSTATE or the IO error kind, never from message text:
//! `pgwire-replication` reports server errors as `"message (SQLSTATE XXXXX)"`, so the code
//! is parsed out of that string once, here, and matched on.

use std::io;

use pgwire_replication::PgWireError;

use crate::Lsn;
use crate::pgoutput::DecodeError;

/// Whether retrying the same operation later may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A connection drop, a restarting server, a slot still held by a dying walsender:
    /// reconnect with backoff.
    Transient,
    /// Bad credentials, a missing slot, wrong settings: retrying cannot help, tell the user.
    Definite,
}

/// What went wrong in the replication session. Every message names what to check or do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The configuration (DSN, slot or publication name, LSN) is unusable.
    #[error("{0}")]
    Config(String),
    /// The server could not be reached at all.
    #[error("cannot connect to Postgres at {target}: {source}")]
    Connect {
        /// The redacted host:port or socket path.
        target: String,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The server refused our credentials.
    #[error("authentication failed for {target}: {message}")]
    Auth {
        /// The redacted host:port or socket path and user.
        target: String,
        /// What the server said.
        message: String,
    },
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is '{actual}' on {target}, but logical decoding needs wal_level = logical; \
         fix: run ALTER SYSTEM SET wal_level = logical; then restart Postgres"
    )]
    WalLevel {
        /// The redacted server address.
        target: String,
        /// The current setting.
        actual: String,
    },
    /// The replication slot does not exist.
    #[error(
        "replication slot \"{slot}\" does not exist on {target}; \
         fix: create it with `pgprism tail --create-slot` (or `pgprism slot create`)"
    )]
    SlotMissing {
        /// The redacted server address.
        target: String,
        /// The slot name.
        slot: String,
    },
    /// The slot exists but cannot be used by us.
    #[error("replication slot \"{slot}\" cannot be used: {reason}")]
    SlotUnusable {
        /// The slot name.
        slot: String,
        /// Why (wrong plugin, other database, physical slot, invalidated WAL).
        reason: String,
    },
    /// A temporary slot disappears with its session, so a reconnect cannot resume it.
    #[error(
        "temporary replication slot \"{slot}\" was lost with its connection ({cause}); \
         changes after {resume_from} cannot be recovered from it: use a permanent slot to survive reconnects"
    )]
    TemporarySlotLost {
        /// The slot name.
        slot: String,
        /// The last position the consumer had.
        resume_from: Lsn,
        /// The error that ended the session.
        cause: String,
    },
    /// The publication does not exist.
    #[error(
        "publication \"{publication}\" does not exist in database {database}; \
         fix: CREATE PUBLICATION, or pass --tables to let pgprism create it"
    )]
    PublicationMissing {
        /// The publication name.
        publication: String,
        /// The database.
        database: String,
    },
    /// The server reported an error.
    #[error("server error{}: {message}", sqlstate.as_deref().map(|s| format!(" (SQLSTATE {s})")).unwrap_or_default())]
    Server {
        /// The five-character SQLSTATE, if the server gave one.
        sqlstate: Option<String>,
        /// The server's message.
        message: String,
    },
    /// The replication connection failed at the IO level after it was established.
    #[error("replication connection to {target} lost: {source}")]
    Io {
        /// The redacted server address.
        target: String,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The bytes the server sent could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The transport reported something unexpected.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// The backfill run under the exported snapshot failed.
    #[error("backfill under the slot's exported snapshot failed: {0}")]
    Backfill(String),
}

impl StreamError {
    /// The one place that decides retry versus give up.
    pub fn class(&self) -> ErrorClass {
        match self {
            StreamError::Io { .. } => ErrorClass::Transient,
            StreamError::Connect { source, .. } => io_class(source.kind()),
            StreamError::Server { sqlstate, .. } => sqlstate
                .as_deref()
                .map_or(ErrorClass::Definite, sqlstate_class),
            StreamError::Protocol(_) => ErrorClass::Transient,
            StreamError::Config(_)
            | StreamError::Auth { .. }
            | StreamError::WalLevel { .. }
            | StreamError::SlotMissing { .. }
            | StreamError::SlotUnusable { .. }
            | StreamError::TemporarySlotLost { .. }
            | StreamError::PublicationMissing { .. }
            | StreamError::Backfill(_)
            | StreamError::Decode(_) => ErrorClass::Definite,
        }
    }

    /// Shorthand for `class() == Transient`.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The SQLSTATE, for server errors.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StreamError::Server { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    /// Translate a transport error; `target` is the redacted address for messages.
    pub(crate) fn from_wire(err: PgWireError, target: &str) -> StreamError {
        match err {
            PgWireError::Io(e) => StreamError::Io {
                target: target.to_owned(),
                source: io::Error::new(e.kind(), e.to_string()),
            },
            PgWireError::Server(text) => {
                let (message, sqlstate) = split_sqlstate(&text);
                if sqlstate.as_deref().is_some_and(|s| s.starts_with("28")) {
                    return StreamError::Auth {
                        target: target.to_owned(),
                        message,
                    };
                }
                StreamError::Server { sqlstate, message }
            }
            PgWireError::Auth(message) => StreamError::Auth {
                target: target.to_owned(),
                message,
            },
            PgWireError::Tls(message) => StreamError::Config(format!("TLS to {target}: {message}")),
            PgWireError::Task(m) => StreamError::Io {
                target: target.to_owned(),
                source: io::Error::other(m),
            },
            other => StreamError::Protocol(other.to_string()),
        }
    }
}

/// Classify a SQLSTATE for the stream ([`pgprism_pg::sqlstate`]): what the table says to
/// retry is transient; a row error cannot happen on a replication session, so anything
/// else is definite.
pub fn sqlstate_class(code: &str) -> ErrorClass {
    match pgprism_pg::sqlstate::class(code) {
        pgprism_pg::sqlstate::Class::Transient => ErrorClass::Transient,
        pgprism_pg::sqlstate::Class::Row | pgprism_pg::sqlstate::Class::Fatal => {
            ErrorClass::Definite
        }
    }
}

fn io_class(kind: io::ErrorKind) -> ErrorClass {
    use io::ErrorKind::*;
    match kind {
        // A wrong host name or an unusable address will not fix itself.
        InvalidInput | InvalidData | PermissionDenied | Unsupported | AddrNotAvailable => {
            ErrorClass::Definite
        }
        _ => ErrorClass::Transient,
    }
}

/// Split `"message (SQLSTATE XXXXX)"` into its parts.
fn split_sqlstate(text: &str) -> (String, Option<String>) {
    if let Some(start) = text.rfind("(SQLSTATE ") {
        let rest = text.get(start + "(SQLSTATE ".len()..).unwrap_or("");
        if let Some(code) = rest.strip_suffix(')')
            && code.len() == 5
            && code.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return (
                text.get(..start).unwrap_or(text).trim_end().to_owned(),
                Some(code.to_owned()),
            );
        }
    }
    (text.to_owned(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_is_parsed_out_of_the_transport_text() {
        let e = StreamError::from_wire(
            PgWireError::Server("replication slot \"x\" does not exist (SQLSTATE 42704)".into()),
            "h:1",
        );
        assert_eq!(e.sqlstate(), Some("42704"));
        assert_eq!(e.class(), ErrorClass::Definite);
        assert!(e.to_string().contains("does not exist"));
    }

    #[test]
    fn auth_failures_are_definite() {
        let e = StreamError::from_wire(
            PgWireError::Server(
                "password authentication failed for user \"u\" (SQLSTATE 28P01)".into(),
            ),
            "h:1",
        );
        assert!(matches!(e, StreamError::Auth { .. }));
        assert!(!e.is_transient());
    }

    #[test]
    fn restarts_and_busy_slots_are_transient() {
        for code in ["57P01", "57P03", "55006", "08006", "53300"] {
            assert_eq!(sqlstate_class(code), ErrorClass::Transient, "{code}");
        }
        for code in ["42704", "55000", "28000", "42501", "XX000"] {
            assert_eq!(sqlstate_class(code), ErrorClass::Definite, "{code}");
        }
    }

    #[test]
    fn io_errors_after_start_are_transient() {
        let e = StreamError::from_wire(
            PgWireError::Io(std::sync::Arc::new(io::Error::from(
                io::ErrorKind::ConnectionReset,
            ))),
            "h:1",
        );
        assert!(e.is_transient());
    }

    #[test]
    fn text_without_sqlstate_is_kept_whole() {
        assert_eq!(split_sqlstate("boom"), ("boom".to_owned(), None));
        assert_eq!(
            split_sqlstate("boom (SQLSTATE 1)"),
            ("boom (SQLSTATE 1)".to_owned(), None)
        );
    }
}
