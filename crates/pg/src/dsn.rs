//! A parsed connection string that keeps every option, honours the TLS ones, and never
//! shows its password.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tokio_postgres::config::{Host, SslMode as WireSslMode};

use crate::DsnError;
use crate::tls::{SslMode, TlsOptions};

/// A parsed connection string (URL `postgres://…` or `key=value` form).
///
/// Every option `tokio-postgres` understands is kept (`connect_timeout`, `keepalives`,
/// `options`, `target_session_attrs`, …); the TLS options it does not understand
/// (`sslmode=verify-ca|verify-full`, `sslrootcert`, `sslcert`, `sslkey`) are taken out
/// and honoured by [`crate::connect`] and by the replication connection.
///
/// `Debug` and `Display` redact the password: this value is safe to log.
#[derive(Clone)]
pub struct Dsn {
    config: tokio_postgres::Config,
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
    application_name: Option<String>,
    /// The `application_name` of sessions when the DSN names none.
    session_name: String,
    tls: Arc<TlsOptions>,
}

/// The TLS keys taken out of a DSN before `tokio-postgres` parses the rest.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl Dsn {
    /// Parse a DSN; certificate files are read now, so a bad path fails here, naming it.
    /// Errors never echo the password.
    pub fn parse(dsn: &str) -> Result<Dsn, DsnError> {
        let shown = redact_dsn(dsn);
        let (rest, tls_params) =
            take_tls_params(dsn).map_err(|e| DsnError(format!("invalid DSN {shown}: {e}")))?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| DsnError(format!("invalid DSN {shown}: {e}")))?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => "localhost".to_owned(),
        };
        if config.get_hosts().len() > 1 {
            return Err(DsnError(format!(
                "DSN {shown} names several hosts; logical replication needs exactly one (the primary)"
            )));
        }
        if config.get_hosts().is_empty() {
            config.host(&host);
        }
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = match config.get_user() {
            Some(u) => u.to_owned(),
            None => {
                let u = std::env::var("PGUSER")
                    .or_else(|_| std::env::var("USER"))
                    .unwrap_or_else(|_| "postgres".to_owned());
                config.user(&u);
                u
            }
        };
        let password = match config.get_password() {
            Some(p) => Some(
                String::from_utf8(p.to_vec())
                    .map_err(|_| DsnError("the DSN's password is not valid UTF-8".to_owned()))?,
            ),
            None => {
                let p = std::env::var("PGPASSWORD").ok();
                if let Some(p) = &p {
                    config.password(p);
                }
                p
            }
        };
        let dbname = config.get_dbname().unwrap_or(&user).to_owned();
        config.dbname(&dbname);
        let unix_socket = host.starts_with('/');
        let tls = TlsOptions::from_params(&tls_params, unix_socket)
            .map_err(|e| DsnError(format!("DSN {shown}: {e}")))?;
        // tokio-postgres only negotiates; what is verified is in our rustls config.
        config.ssl_mode(match tls.mode() {
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Prefer => WireSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
        });
        Ok(Dsn {
            application_name: config.get_application_name().map(str::to_owned),
            config,
            host,
            port,
            user,
            password,
            dbname,
            session_name: "pgprism".to_owned(),
            tls: Arc::new(tls),
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

    /// The TLS options (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
    pub fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// The application name, if the DSN set one.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// The `application_name` sessions opened from this DSN carry: the DSN's own, else
    /// the one [`Dsn::named`] gave.
    pub fn session_name(&self) -> &str {
        self.application_name
            .as_deref()
            .unwrap_or(&self.session_name)
    }

    /// `host:port` (or the socket path) for messages.
    pub fn target(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Sessions opened from the result are named `name` (`application_name`, shown in
    /// `pg_stat_activity`) unless the DSN names them itself.
    #[must_use]
    pub fn named(&self, name: &str) -> Dsn {
        let mut dsn = self.clone();
        name.clone_into(&mut dsn.session_name);
        dsn
    }

    /// Sessions opened from the result also run with these server options (`-c name=value
    /// …`), after the DSN's own `options`.
    #[must_use]
    pub fn with_options(&self, options: &str) -> Dsn {
        let mut dsn = self.clone();
        let joined = match self.config.get_options() {
            Some(own) if !own.trim().is_empty() => format!("{own} {options}"),
            _ => options.to_owned(),
        };
        dsn.config.options(&joined);
        dsn
    }

    /// The `tokio-postgres` config of a session. TLS is [`crate::connect`]'s part: a
    /// session opened from this config by hand with `NoTls` would not honour `sslmode`.
    pub(crate) fn session_config(&self) -> tokio_postgres::Config {
        let mut cfg = self.config.clone();
        if self.application_name.is_none() {
            cfg.application_name(&self.session_name);
        }
        cfg
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pw = if self.password.is_some() { ":***" } else { "" };
        write!(
            f,
            "postgres://{}{pw}@{}/{}",
            self.user,
            self.target(),
            self.dbname
        )?;
        if self.tls.mode() != SslMode::Prefer {
            write!(f, "?sslmode={}", self.tls.mode())?;
        }
        Ok(())
    }
}

/// A DSN in a configuration file: parsed where it is read, so that a bad one is an error
/// naming its key (the message never shows the password).
impl<'de> serde::Deserialize<'de> for Dsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dsn, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        if text.trim().is_empty() {
            return Err(serde::de::Error::custom(
                "is empty: set a connection string like postgres://user@host:5432/db",
            ));
        }
        Dsn::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({self})")
    }
}

/// A DSN's TLS parameters, as written.
#[derive(Debug, Default)]
pub(crate) struct TlsParams {
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<PathBuf>,
    pub(crate) sslcert: Option<PathBuf>,
    pub(crate) sslkey: Option<PathBuf>,
}

impl TlsParams {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value.into()),
            "sslcert" => self.sslcert = Some(value.into()),
            _ => self.sslkey = Some(value.into()),
        }
    }
}

/// Split the TLS keys out of a DSN of either form: the rest (for `tokio-postgres`) and
/// their values.
fn take_tls_params(dsn: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let url = dsn
        .strip_prefix("postgres://")
        .or_else(|| dsn.strip_prefix("postgresql://"));
    if url.is_some() {
        let Some(q) = dsn.find('?') else {
            return Ok((dsn.to_owned(), params));
        };
        let (base, query) = dsn.split_at(q);
        let mut kept = Vec::new();
        for pair in query[1..].split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if TLS_KEYS.contains(&key) {
                params.set(key, percent_decode(value)?);
            } else if !pair.is_empty() {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    // key=value form: copy every pair but ours, byte for byte.
    let mut rest = String::with_capacity(dsn.len());
    let mut s = dsn;
    loop {
        let trimmed = s.trim_start();
        rest.push_str(&s[..s.len() - trimmed.len()]);
        s = trimmed;
        if s.is_empty() {
            break;
        }
        let key_end = s
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(s.len());
        let key = &s[..key_end];
        let after_key = s[key_end..].trim_start();
        let Some(after_eq) = after_key.strip_prefix('=') else {
            return Err(format!("missing `=` after {key:?}"));
        };
        let value_start = after_eq.trim_start();
        let (value, consumed) = kv_value(value_start)?;
        let end = s.len() - value_start.len() + consumed;
        if TLS_KEYS.contains(&key) {
            params.set(key, value);
        } else {
            rest.push_str(&s[..end]);
        }
        s = &s[end..];
    }
    Ok((rest, params))
}

/// One value of the key=value form: quoted (`'…'`, backslash escapes) or up to the next
/// whitespace. Returns the value and the bytes it took.
fn kv_value(s: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    if let Some(body) = s.strip_prefix('\'') {
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                '\'' => return Ok((out, i + 2)),
                c => out.push(c),
            }
        }
        return Err("unterminated quoted value".to_owned());
    }
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => return Ok((out, i)),
            '\\' => {
                if let Some((_, e)) = chars.next() {
                    out.push(e);
                }
            }
            c => out.push(c),
        }
    }
    Ok((out, s.len()))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_never_shows() {
        let d = Dsn::parse("postgres://app:s3cret@db.example:6543/shop").unwrap();
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
        let d = Dsn::parse("host=/tmp/x port=5 user=u password='p w' dbname=d").unwrap();
        assert_eq!(d.host(), "/tmp/x");
        assert_eq!(d.target(), "/tmp/x/.s.PGSQL.5");
        assert_eq!(d.password(), Some("p w"));
    }

    #[test]
    fn other_options_are_kept() {
        let d = Dsn::parse(
            "postgres://u@h/db?connect_timeout=7&sslmode=disable&keepalives_idle=9&options=-c%20x%3Dy",
        )
        .unwrap();
        let cfg = d
            .named("pgprism sink t")
            .with_options("-c lock_timeout=5")
            .session_config();
        assert_eq!(
            cfg.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(7))
        );
        assert_eq!(cfg.get_keepalives_idle(), std::time::Duration::from_secs(9));
        assert_eq!(cfg.get_options(), Some("-c x=y -c lock_timeout=5"));
        assert_eq!(cfg.get_application_name(), Some("pgprism sink t"));
        assert_eq!(d.tls().mode(), SslMode::Disable);
        let d =
            Dsn::parse("host=h connect_timeout=3 sslmode='require' application_name=mine").unwrap();
        let cfg = d.named("pgprism sink t").session_config();
        assert_eq!(
            cfg.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(cfg.get_application_name(), Some("mine"));
        assert_eq!(d.tls().mode(), SslMode::Require);
        assert_eq!(cfg.get_ssl_mode(), WireSslMode::Require);
    }

    #[test]
    fn tls_keys_come_out_of_both_forms() {
        let (rest, p) = take_tls_params(
            "postgres://u:p@h/db?sslmode=verify-full&x=1&sslrootcert=%2Ftmp%2Fca.pem&sslcert=c&sslkey=k",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h/db?x=1");
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(p.sslcert, Some(PathBuf::from("c")));
        assert_eq!(p.sslkey, Some(PathBuf::from("k")));
        let (rest, p) =
            take_tls_params("host=h  sslmode = verify-ca password='a b\\'c' sslrootcert='/x y'")
                .unwrap();
        assert_eq!(rest, "host=h   password='a b\\'c' ");
        assert_eq!(p.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/x y")));
        assert!(take_tls_params("host=h sslmode").is_err());
        assert!(take_tls_params("host='h").is_err());
    }

    #[test]
    fn bad_tls_options_name_the_key_and_hide_the_password() {
        for (dsn, expect) in [
            ("postgres://u:hunter2@h/db?sslmode=always", "sslmode"),
            ("postgres://u:hunter2@h/db?sslmode=allow", "sslmode"),
            (
                "postgres://u:hunter2@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
            ("postgres://u:hunter2@h/db?sslcert=/x.pem", "sslkey"),
        ] {
            let err = Dsn::parse(dsn).unwrap_err().to_string();
            assert!(err.contains(expect), "{dsn}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_unix_socket_never_negotiates_tls() {
        let d = Dsn::parse("host=/tmp/x sslmode=require").unwrap();
        assert_eq!(d.session_config().get_ssl_mode(), WireSslMode::Disable);
        assert_eq!(d.tls().mode(), SslMode::Disable);
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
        let err = Dsn::parse("postgres://u:hunter2@h:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
