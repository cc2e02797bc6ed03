//! What can go wrong in a sink, and the one place that decides what to do about it.
//!
//! [`SinkError::class`] decides from the SQLSTATE or the Redis error kind, never from
//! message text: retry the batch ([`Class::Transient`]), send the offending row to the
//! dead letters ([`Class::Row`]), or stop the target and tell the operator
//! ([`Class::Fatal`]).

use pgprism_decoder::pgoutput::DecodeError;
use pgprism_leader::LeaderError;
use pgprism_pg::error_text;
use redis::RetryMethod;

/// What to do about an error: retry the batch after a backoff (`Transient`),
/// dead-letter the row the target refused and go on (`Row`), or stop and say why
/// (`Fatal`: missing table, permissions, a newer leader). The SQLSTATE table behind it is
/// [`pgprism_pg::sqlstate`].
pub use pgprism_pg::sqlstate::Class;

/// Errors of projections and sink writers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The projection or target cannot work as configured; the message says the fix.
    #[error("{target}: {message}")]
    Config {
        /// The projection or target name.
        target: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// From the fence or offsets store; `Fenced` means a newer leader owns the sink.
    #[error(transparent)]
    Leader(#[from] LeaderError),
    /// A Postgres error.
    #[error("{target}: {context}: {}", error_text(source))]
    Postgres {
        /// The projection or target.
        target: String,
        /// What we were doing.
        context: &'static str,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A Postgres server could not be reached.
    #[error(
        "{target}: cannot connect to Postgres at {server}: {}",
        error_text(source)
    )]
    Connect {
        /// The projection or target.
        target: String,
        /// `host:port` (never the password).
        server: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A Redis error.
    #[error("{target}: {context}: {source}")]
    Redis {
        /// The target.
        target: String,
        /// What we were doing.
        context: &'static str,
        /// The error.
        #[source]
        source: redis::RedisError,
    },
    /// Work in progress was lost (a replay transaction rolled back): start the pipeline
    /// over from the stored offsets.
    #[error("{target}: {message}")]
    Restart {
        /// The target.
        target: String,
        /// What happened.
        message: String,
    },
    /// A target's flush kept failing transiently for `batch.detach_after`: the projector
    /// sets it aside and goes on with the others.
    #[error("{target}: failing for {failing:?}, set aside until it answers again: {source}")]
    Stalled {
        /// The target.
        target: String,
        /// How long it has been failing.
        failing: std::time::Duration,
        /// The last error.
        #[source]
        source: Box<SinkError>,
    },
    /// A change could not be typed (a value its column type rejects).
    #[error("{target}: {source}")]
    Decode {
        /// The projection.
        target: String,
        /// The error.
        #[source]
        source: DecodeError,
    },
}

impl SinkError {
    /// Transient, row-level or fatal.
    pub fn class(&self) -> Class {
        match self {
            SinkError::Config { .. } | SinkError::Decode { .. } => Class::Fatal,
            SinkError::Restart { .. } | SinkError::Stalled { .. } => Class::Transient,
            SinkError::Leader(LeaderError::Db { source, .. }) => pg_class(source),
            SinkError::Leader(LeaderError::Redis { .. }) => Class::Transient,
            SinkError::Leader(_) => Class::Fatal,
            SinkError::Postgres { source, .. } | SinkError::Connect { source, .. } => {
                pg_class(source)
            }
            SinkError::Redis { source, .. } => redis_class(source),
        }
    }

    /// A newer leader owns a sink: stop writing and step down.
    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Leader(LeaderError::Fenced { .. }))
    }

    /// The SQLSTATE or Redis error code, for dead letters and logs.
    pub fn code(&self) -> Option<String> {
        match self {
            SinkError::Postgres { source, .. }
            | SinkError::Leader(LeaderError::Db { source, .. }) => {
                source.code().map(|c| c.code().to_owned())
            }
            SinkError::Redis { source, .. } => source.code().map(str::to_owned),
            _ => None,
        }
    }

    /// The server's own message, without our context (for dead letters).
    pub fn detail(&self) -> String {
        match self {
            SinkError::Postgres { source, .. } => match source.as_db_error() {
                Some(db) => match db.detail() {
                    Some(d) => format!("{}: {d}", db.message()),
                    None => db.message().to_owned(),
                },
                None => source.to_string(),
            },
            other => other.to_string(),
        }
    }

    pub(crate) fn config(target: &str, message: impl Into<String>) -> SinkError {
        SinkError::Config {
            target: target.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn pg(
        target: &str,
        context: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> SinkError {
        let target = target.to_owned();
        move |source| SinkError::Postgres {
            target,
            context,
            source,
        }
    }

    pub(crate) fn redis(
        target: &str,
        context: &'static str,
    ) -> impl FnOnce(redis::RedisError) -> SinkError {
        let target = target.to_owned();
        move |source| SinkError::Redis {
            target,
            context,
            source,
        }
    }
}

/// Classify a Postgres error by SQLSTATE (no code: the connection broke).
pub fn pg_class(e: &tokio_postgres::Error) -> Class {
    let Some(code) = e.code() else {
        return Class::Transient;
    };
    sqlstate(code.code())
}

/// Classify a SQLSTATE: the one table of [`pgprism_pg::sqlstate`].
pub fn sqlstate(code: &str) -> Class {
    pgprism_pg::sqlstate::class(code)
}

/// Classify a Redis error by kind: what the client would retry or reconnect for is
/// transient; everything else is fatal (row-level Redis errors come back per key from
/// our scripts instead, see [`crate::redis`]).
pub fn redis_class(e: &redis::RedisError) -> Class {
    match e.retry_method() {
        RetryMethod::NoRetry => Class::Fatal,
        _ => Class::Transient,
    }
}
