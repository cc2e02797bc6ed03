//! The one error type of the testkit: every message names what was run and carries the
//! output needed to see why it failed (stderr, the tail of the server log).

use std::io;

/// Why a test server or a command against it failed.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A binary the testkit needs is not installed.
    #[error("{what} not found: run scripts/install.sh")]
    Missing {
        /// The binary or directory that was looked for, and where.
        what: String,
    },
    /// An IO operation (creating the temp dir, spawning, reading a file) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}):\n{stderr}{log}")]
    Command {
        /// The command line (never a password).
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr (and stdout, when stderr was empty).
        stderr: String,
        /// The tail of the server log, with a heading, or empty.
        log: String,
    },
    /// A server did not become ready in time.
    #[error("{what} did not become ready within {secs} s{log}")]
    Timeout {
        /// The server.
        what: String,
        /// How long was waited.
        secs: u64,
        /// The tail of the server log, with a heading, or empty.
        log: String,
    },
    /// `tokio-postgres` could not connect.
    #[error("connecting to {target}: {detail}")]
    Connect {
        /// `host:port/db`.
        target: String,
        /// The server's message, when it sent one, else the driver's.
        detail: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl TestkitError {
    /// An [`TestkitError::Io`] with `context`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> TestkitError {
        let context = context.into();
        move |source| TestkitError::Io { context, source }
    }
}
