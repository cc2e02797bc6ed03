//! pgprism's Postgres layer, shared by every crate that opens a session: the DSN type
//! (every option kept, TLS honoured, passwords redacted), the one [`connect`] function
//! (TLS, `application_name`, session formats), error text, the SQLSTATE table
//! ([`sqlstate`]), and identifier quoting.
//!
//! Every SQL session pgprism opens — election, fence, offsets, sinks, query recomputes,
//! the commands — goes through [`connect`]; the replication session takes the same
//! [`TlsOptions`] (see `pgprism_decoder::stream`). A session opened any other way would
//! silently ignore `sslmode`.

mod dsn;
pub mod sqlstate;
mod tls;

pub use dsn::{Dsn, redact_dsn};
pub use tls::{SslMode, TlsOptions, install_crypto_provider};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// A DSN that cannot be used; the message names the key and never the password.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DsnError(pub String);

/// The settings of every session: the text formats pgprism reads and writes, and quiet
/// notices.
const SESSION_SETTINGS: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET client_min_messages = warning";

/// The task driving a session's connection; it ends when the session does.
pub type Connection = JoinHandle<Result<(), tokio_postgres::Error>>;

/// Open a SQL session to `dsn` (named by [`Dsn::named`]), over TLS as its `sslmode`
/// asks, with pgprism's session settings. The connection runs in a spawned task,
/// returned so that a caller can notice the session ending.
///
/// Errors are the server's or the network's; [`error_text`] words them for a log line.
pub async fn connect(dsn: &Dsn) -> Result<(Client, Connection), tokio_postgres::Error> {
    let config = dsn.session_config();
    let (client, connection) = match dsn.tls().connector() {
        None => {
            let (client, conn) = config.connect(NoTls).await?;
            (client, spawn(conn))
        }
        Some(tls) => {
            let (client, conn) = config.connect(tls.clone()).await?;
            (client, spawn(conn))
        }
    };
    client.batch_execute(SESSION_SETTINGS).await?;
    Ok((client, connection))
}

fn spawn<F>(connection: F) -> Connection
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let ended = connection.await;
        if let Err(e) = &ended {
            tracing::debug!(error = %e, "Postgres session ended");
        }
        ended
    })
}

/// A Postgres error as one line: the server's message, SQLSTATE, detail and hint, or the
/// network's error with its cause; a refused TLS negotiation says how to fix it.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str("; ");
            text.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            text.push_str("; hint: ");
            text.push_str(hint);
        }
        return text;
    }
    match std::error::Error::source(e) {
        Some(source) if source.to_string().contains("server does not support TLS") => {
            "the server does not offer TLS and sslmode asks for it; fix: turn on ssl in \
             the server's postgresql.conf, or set sslmode=prefer (or disable) in the DSN"
                .to_owned()
        }
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// Whether a failed connect is the configuration's fault and will fail the same way
/// until someone changes it: TLS that cannot be set up (not offered while `sslmode`
/// requires it, a certificate that does not verify), a refused login (SQLSTATE class 28:
/// password, `pg_hba.conf`), a database that does not exist (3D000). A network error or a
/// server starting up is not.
pub fn is_misconfiguration(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("28") || code == "3D000";
    }
    // tokio-postgres does not expose its error kinds: its TLS kind's text is stable. A
    // handshake cut by a restarting server is an IO error of another kind: transient.
    let Some(source) = std::error::Error::source(e) else {
        return false;
    };
    e.to_string().starts_with("error performing TLS handshake")
        && (source.to_string().contains("server does not support TLS")
            || source
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData))
}

/// Quote an SQL identifier: `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// Split `schema.table` (default schema `public`); names may be double-quoted (`"a.b".c`
/// is two parts, `""` a quote inside one). Unquoted names are taken as written, not folded
/// to lower case. The one parser of table names, for the configuration and the commands.
pub fn parse_table_name(name: &str) -> Option<(String, String)> {
    let parts = split_qualified(name)?;
    match parts.as_slice() {
        [table] => Some(("public".to_owned(), table.clone())),
        [schema, table] => Some((schema.clone(), table.clone())),
        _ => None,
    }
}

/// Split a dotted name into parts, honouring double quotes (`"a.b".c` is two parts).
fn split_qualified(name: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = name.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

/// `schema.table` (see [`parse_table_name`]) quoted for SQL: `"schema"."table"`.
pub fn quote_table_name(name: &str) -> Option<String> {
    let (schema, table) = parse_table_name(name)?;
    Some(format!("{}.{}", quote_ident(&schema), quote_ident(&table)))
}

/// Quote a string literal as `E'…'`, safe whatever `standard_conforming_strings` says.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// What an armed failpoint does (crates' `failpoints` feature, `FAILPOINTS` at run time):
/// say which on stderr, then abort the process. SIGABRT is like kill -9 for everyone
/// else: no destructor runs, no further byte leaves on any socket, every open
/// transaction is cut off.
pub fn crash_at(point: &str) -> ! {
    eprintln!("failpoint {point} hit");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_parsed_once_quote_aware() {
        assert_eq!(quote_table_name("orders").unwrap(), r#""public"."orders""#);
        assert_eq!(
            quote_table_name(r#"public."Orders""#).unwrap(),
            r#""public"."Orders""#
        );
        assert_eq!(
            quote_table_name(r#""my.schema".t"#).unwrap(),
            r#""my.schema"."t""#
        );
        assert_eq!(quote_table_name(r#"s."a""b""#).unwrap(), r#""s"."a""b""#);
        for bad in ["a.b.c", "a..b", "", r#""open"#, r#""a"b.c"#] {
            assert_eq!(quote_table_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal(r"it's \x"), r"E'it''s \\x'");
    }
}
