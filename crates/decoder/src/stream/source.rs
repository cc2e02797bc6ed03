//! Where the source database is and who we are there: a parsed DSN that never shows its
//! password, plus the quoting rules for names we put into replication commands.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::config::Host;

use super::error::StreamError;

/// A parsed connection string (URL `postgres://…` or `key=value` form).
///
/// `Debug` and `Display` redact the password: this value is safe to log.
#[derive(Clone)]
pub struct SourceDsn {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
    application_name: Option<String>,
    tls_required: bool,
}

impl SourceDsn {
    /// Parse a DSN. Errors never echo the password.
    pub fn parse(dsn: &str) -> Result<SourceDsn, StreamError> {
        let cfg = tokio_postgres::Config::from_str(dsn)
            .map_err(|e| StreamError::Config(format!("invalid DSN {}: {e}", redact_dsn(dsn))))?;
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => "localhost".to_owned(),
        };
        if cfg.get_hosts().len() > 1 {
            return Err(StreamError::Config(format!(
                "DSN {} names several hosts; logical replication needs exactly one (the primary)",
                redact_dsn(dsn)
            )));
        }
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg
            .get_user()
            .map(str::to_owned)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".to_owned());
        let password = match cfg.get_password() {
            Some(p) => Some(String::from_utf8(p.to_vec()).map_err(|_| {
                StreamError::Config("the DSN's password is not valid UTF-8".to_owned())
            })?),
            None => std::env::var("PGPASSWORD").ok(),
        };
        let dbname = cfg.get_dbname().unwrap_or(&user).to_owned();
        let tls_required = matches!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        Ok(SourceDsn {
            host,
            port,
            user,
            password,
            dbname,
            application_name: cfg.get_application_name().map(str::to_owned),
            tls_required,
        })
    }

    /// Host name, address, or unix socket directory (starts with `/`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// User name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Database name.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The password, for handing to a connection. Never log it.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Whether the DSN asked for `sslmode=require`.
    pub fn tls_required(&self) -> bool {
        self.tls_required
    }

    /// The application name, if the DSN set one.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// `host:port` (or the socket path) for messages.
    pub fn target(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A `tokio_postgres` config for plain SQL sessions on the same server.
    pub fn sql_config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(self.application_name.as_deref().unwrap_or("pgprism"));
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        cfg
    }
}

impl fmt::Display for SourceDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pw = if self.password.is_some() { ":***" } else { "" };
        write!(
            f,
            "postgres://{}{pw}@{}/{}",
            self.user,
            self.target(),
            self.dbname
        )
    }
}

impl fmt::Debug for SourceDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceDsn({self})")
    }
}

/// Hide the password in a DSN string of either form, for error messages and logs.
pub fn redact_dsn(dsn: &str) -> String {
    if let Some(rest) = dsn
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            dsn.strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        // userinfo ends at the last '@' before the first '/' of the path
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let authority = rest.get(..authority_end).unwrap_or(rest);
        if let Some(at) = authority.rfind('@') {
            let userinfo = authority.get(..at).unwrap_or("");
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            let after = rest.get(at..).unwrap_or("");
            return redact_query_password(&format!("{scheme}{shown}{after}"));
        }
        return redact_query_password(dsn);
    }
    // key=value form: replace the value of password=…, quoted or not
    let mut out = String::with_capacity(dsn.len());
    let mut rest = dsn;
    while let Some(pos) = rest.find("password") {
        let (before, after) = rest.split_at(pos);
        out.push_str(before);
        let after_key = &after["password".len()..];
        let trimmed = after_key.trim_start();
        if let Some(value) = trimmed.strip_prefix('=') {
            out.push_str("password=***");
            let value = value.trim_start();
            rest = if let Some(q) = value.strip_prefix('\'') {
                skip_quoted(q)
            } else {
                value.find(char::is_whitespace).map_or("", |i| &value[i..])
            };
        } else {
            out.push_str("password");
            rest = after_key;
        }
    }
    out.push_str(rest);
    out
}

fn skip_quoted(s: &str) -> &str {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '\'' if !escaped => return &s[i + 1..],
            _ => escaped = false,
        }
    }
    ""
}

fn redact_query_password(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (base, query) = url.split_at(q);
    let params: Vec<String> = query[1..]
        .split('&')
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***".to_owned()
            } else {
                kv.to_owned()
            }
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// Quote an SQL identifier: `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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

/// Postgres allows slot names of lower-case letters, digits and `_`, at most 63 bytes;
/// we check before putting one into a replication command.
pub fn validate_slot_name(name: &str) -> Result<(), StreamError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StreamError::Config(format!(
            "invalid slot name {name:?}: use 1 to 63 lower-case letters, digits and underscores"
        )));
    }
    Ok(())
}

/// Validate a publication name (any identifier without NUL, at most 63 bytes).
pub fn validate_publication_name(name: &str) -> Result<(), StreamError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(StreamError::Config(format!(
            "invalid publication name {name:?}: use 1 to 63 bytes, no NUL"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_never_shows() {
        let d = SourceDsn::parse("postgres://app:s3cret@db.example:6543/shop").unwrap();
        assert_eq!(d.host(), "db.example");
        assert_eq!(d.port(), 6543);
        assert_eq!(d.user(), "app");
        assert_eq!(d.dbname(), "shop");
        assert_eq!(d.password(), Some("s3cret"));
        for shown in [format!("{d}"), format!("{d:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("app:***@db.example:6543/shop"), "{shown}");
        }
    }

    #[test]
    fn key_value_form_parses() {
        let d = SourceDsn::parse("host=/tmp/x port=5 user=u password='p w' dbname=d").unwrap();
        assert_eq!(d.host(), "/tmp/x");
        assert_eq!(d.target(), "/tmp/x/.s.PGSQL.5");
        assert_eq!(d.password(), Some("p w"));
    }

    #[test]
    fn redaction_covers_every_form() {
        for (dsn, secret) in [
            ("postgres://u:hunter2@h/db", "hunter2"),
            ("postgresql://u:p%40ss@h:5/db?sslmode=disable", "p%40ss"),
            ("postgres://u@h/db?password=hunter2&x=1", "hunter2"),
            ("host=h password=hunter2 user=u", "hunter2"),
            ("host=h password = 'hun ter2' user=u", "hun ter2"),
            ("password=hunter2", "hunter2"),
        ] {
            let r = redact_dsn(dsn);
            assert!(!r.contains(secret), "{dsn} -> {r}");
            assert!(r.contains("***"), "{dsn} -> {r}");
        }
        assert_eq!(redact_dsn("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn bad_dsn_error_hides_password() {
        let err = SourceDsn::parse("postgres://u:hunter2@h:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal(r"it's \x"), r"E'it''s \\x'");
    }

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("pgprism_1").is_ok());
        for bad in ["", "Upper", "with space", "semi;colon", &"x".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad}");
        }
    }
}
