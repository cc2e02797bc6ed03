//! A throwaway Postgres server: `initdb` into a temp dir, `pg_ctl start` on a free port,
//! torn down on drop.
//!
//! Layout of the temp dir: `data/` (the cluster), `postgres.log` (server log), and the
//! Unix socket. The server listens on 127.0.0.1 only; the superuser `pgprism` logs in
//! with a password over TCP (SCRAM, for normal and replication connections alike) and
//! without one over the socket. The settings favour speed over durability (`fsync=off`,
//! `full_page_writes=off`): a crash of the *server* (`pg_ctl stop -m immediate`, SIGKILL)
//! keeps committed data, a crash of the machine would not. `synchronous_commit` stays
//! `on` for that reason: with `off`, a commit acknowledged to the client is only in the
//! WAL buffers for up to ~600 ms and an immediate stop loses it, which breaks exactly the
//! chaos tests this kit is for; with `fsync=off`, `on` costs one `write(2)` per commit.
//!
//! Ports: a free port is found by binding 127.0.0.1:0 and releasing it, which races with
//! parallel tests doing the same; when Postgres then finds the port taken, start retries
//! with another. A stopped server keeps its port for [`PgServer::start_again`], and
//! another test could take it meanwhile; that window is short and start then fails
//! loudly.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use crate::TestkitError;
use crate::process::{Signal, alive, resume, signal, wait_gone};
use crate::run_as::RunAs;
use crate::server_log::{log_tail, start_on_free_port};

/// The superuser created by `initdb`.
const SUPERUSER: &str = "pgprism";
/// Its password (not a secret: servers are throwaway and listen on loopback only).
const PASSWORD: &str = "pgprism-secret";
/// The only address the server listens on.
const HOST: &str = "127.0.0.1";
/// `pg_ctl -t`: seconds to wait for start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Lines of server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;
/// The settings file written next to `postgresql.conf` and included from it.
const CONF_FILE: &str = "pgprism.conf";

/// Client authentication: password (SCRAM) over TCP, for replication too; trust on the
/// socket, which only the server's user (and root) can reach.
const PG_HBA: &str = "\
# Written by pgprism-testkit.
local   all          all                   trust
local   replication  all                   trust
host    all          all     127.0.0.1/32  scram-sha-256
host    replication  all     127.0.0.1/32  scram-sha-256
";

/// With [`PgBuilder::tls`]: TCP sessions (SQL and replication) only over TLS; a session
/// without it is refused ("no pg_hba.conf entry … no encryption").
const PG_HBA_TLS_ONLY: &str = "\
# Written by pgprism-testkit: TLS only over TCP.
local    all          all                   trust
local    replication  all                   trust
hostssl  all          all     127.0.0.1/32  scram-sha-256
hostssl  replication  all     127.0.0.1/32  scram-sha-256
";

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `psql` and `pg_recvlogical`:
/// `pg_config --bindir`, else the highest version under `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> Result<PathBuf, TestkitError> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(find_bin_dir)
        .clone()
        .map_err(|what| TestkitError::Missing { what })
}

fn find_bin_dir() -> Result<PathBuf, String> {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    // On Debian `pg_config` may come from libpq-dev and point at /usr/bin, which has psql
    // but no server; hence the check and the fallback.
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(version) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let dir = entry.path().join("bin");
        if has_server(&dir) && best.as_ref().is_none_or(|(b, _)| version > *b) {
            best = Some((version, dir));
        }
    }
    best.map(|(_, dir)| dir).ok_or_else(|| {
        "Postgres server binaries (initdb, pg_ctl, postgres, psql; looked in \
         `pg_config --bindir` and /usr/lib/postgresql/*/bin)"
            .to_owned()
    })
}

/// How `pg_ctl stop` shuts the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, exit cleanly.
    Fast,
    /// Exit at once without a checkpoint: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Options for a [`PgServer`]; from [`PgServer::builder`].
#[derive(Debug, Clone)]
pub struct PgBuilder {
    wal_level: String,
    settings: Vec<(String, String)>,
    /// Server certificate and key (PEM text) for TLS-only TCP.
    tls: Option<(String, String)>,
}

impl PgBuilder {
    /// `wal_level`: `logical` (the default) or `replica`.
    pub fn wal_level(mut self, level: &str) -> PgBuilder {
        level.clone_into(&mut self.wal_level);
        self
    }

    /// An extra `postgresql.conf` setting; overrides the testkit's defaults.
    pub fn setting(mut self, name: &str, value: &str) -> PgBuilder {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Serve TCP over TLS only, with `ca`'s server certificate (`hostssl` lines only in
    /// `pg_hba.conf`); the Unix socket stays as it is.
    pub fn tls(mut self, ca: &crate::TestCa) -> Result<PgBuilder, TestkitError> {
        self.tls = Some((ca.read("server.crt")?, ca.read("server.key")?));
        Ok(self)
    }

    /// initdb and start the server.
    pub fn start(self) -> Result<PgServer, TestkitError> {
        let bin = bin_dir()?;
        let run_as = RunAs::server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("pgprism-pg-")
            .tempdir_in(run_as.temp_base())
            .map_err(TestkitError::io("creating a temp dir for Postgres"))?;
        run_as
            .own(dir.path())
            .map_err(TestkitError::io(format!("chown {}", dir.path().display())))?;
        let mut server = PgServer {
            data_dir: dir.path().join("data"),
            log_file: dir.path().join("postgres.log"),
            dir,
            port: 0,
            run_as,
            bin,
        };
        server.init(self.tls.is_some())?;
        let mut settings = self.render_settings(server.socket_dir());
        if let Some((cert, key)) = &self.tls {
            let (cert_file, key_file) = (
                server.dir.path().join("server.crt"),
                server.dir.path().join("server.key"),
            );
            server.run_as.write(&cert_file, cert)?;
            server.run_as.write(&key_file, key)?;
            std::fs::set_permissions(
                &key_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .map_err(TestkitError::io("chmod 600 server.key"))?;
            settings.push_str(&format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                conf_quote(&cert_file.to_string_lossy()),
                conf_quote(&key_file.to_string_lossy())
            ));
        }
        let log_file = server.log_file.clone();
        server.port = start_on_free_port(&log_file, |port| {
            server.port = port;
            server.run_as.write(
                &server.data_dir.join(CONF_FILE),
                &format!("port = {port}\n{settings}"),
            )?;
            server.start_again()
        })?;
        Ok(server)
    }

    fn render_settings(&self, socket_dir: &Path) -> String {
        let socket_dir = socket_dir.to_string_lossy();
        let defaults = [
            ("listen_addresses", HOST),
            ("unix_socket_directories", &socket_dir),
            ("wal_level", &self.wal_level),
            ("max_replication_slots", "20"),
            ("max_wal_senders", "20"),
            ("max_connections", "100"),
            ("shared_buffers", "64MB"),
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("logging_collector", "off"),
            ("log_min_messages", "warning"),
        ];
        let extra = self.settings.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        defaults
            .into_iter()
            .chain(extra)
            .map(|(name, value)| format!("{name} = {}\n", conf_quote(value)))
            .collect()
    }
}

/// A running Postgres server in its own temp dir; stopped and deleted on drop.
pub struct PgServer {
    // Dropped after `Drop::drop` has stopped the server.
    dir: TempDir,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    run_as: RunAs,
    bin: PathBuf,
}

impl PgServer {
    /// A server with the defaults (`wal_level=logical`, free port).
    pub fn start() -> Result<PgServer, TestkitError> {
        PgServer::builder().start()
    }

    /// Options before starting.
    pub fn builder() -> PgBuilder {
        PgBuilder {
            wal_level: "logical".to_owned(),
            settings: Vec::new(),
            tls: None,
        }
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name.
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        PASSWORD
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `postgres://pgprism:PASSWORD@127.0.0.1:PORT/DB`, the database name percent-encoded.
    pub fn dsn(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{PASSWORD}@{HOST}:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    /// Create database `name`; returns its DSN.
    pub fn create_database(&self, name: &str) -> Result<String, TestkitError> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )?;
        Ok(self.dsn(name))
    }

    /// A new database with a name unique in this process: `(name, dsn)`.
    pub fn fresh_database(&self) -> Result<(String, String), TestkitError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let dsn = self.create_database(&name)?;
        Ok((name, dsn))
    }

    /// Run `sql` (any number of statements, each in its own transaction unless the script
    /// says otherwise) with `psql -X -q -A -t -v ON_ERROR_STOP=1` over TCP; returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        let conninfo = format!(
            "host={HOST} port={} user={SUPERUSER} dbname={}",
            self.port,
            conninfo_quote(db)
        );
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
            "-f",
            "-",
        ]);
        clean_env(&mut cmd)
            .env("PGPASSWORD", PASSWORD)
            .env("PGCLIENTENCODING", "UTF8")
            .env("PGCONNECT_TIMEOUT", "10");
        let first_line = sql.trim_start().lines().next().unwrap_or_default();
        let shown: String = first_line.chars().take(120).collect();
        let command = format!("{} <<< {shown:?}", describe(&cmd, None));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(TestkitError::io(format!("running {command}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from a thread: psql may fill its stdout pipe before it reads all input.
        let out = thread::scope(|s| {
            s.spawn(move || stdin.write_all(sql.as_bytes()));
            child.wait_with_output()
        })
        .map_err(TestkitError::io(format!("running {command}")))?;
        check(command, out, None)
    }

    /// A `tokio-postgres` client to `db`; its connection task is spawned on the current
    /// tokio runtime.
    pub async fn client(&self, db: &str) -> Result<tokio_postgres::Client, TestkitError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .password(PASSWORD)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) =
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|source| TestkitError::Connect {
                    target: format!("{HOST}:{}/{db}", self.port),
                    detail: source
                        .as_db_error()
                        .map_or_else(|| source.to_string(), |e| e.message().to_owned()),
                    source,
                })?;
        tokio::spawn(async move {
            // Ends with an error when the server goes away; the client then reports it.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Stop with `mode` and start again on the same port and data dir.
    pub fn restart(&self, mode: StopMode) -> Result<(), TestkitError> {
        self.stop(mode)?;
        self.start_again()
    }

    /// `pg_ctl stop -m MODE`, waiting until the server is gone.
    pub fn stop(&self, mode: StopMode) -> Result<(), TestkitError> {
        self.pg_ctl(&["stop", "-m", mode.as_str()]).map(drop)
    }

    /// Start a stopped server again, on the same port and data dir.
    pub fn start_again(&self) -> Result<(), TestkitError> {
        let log = self.log_file.to_string_lossy();
        self.pg_ctl(&["start", "-l", &log]).map(drop)
    }

    /// The postmaster's pid while it runs (from `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// The server log so far, for debugging a failing test.
    pub fn log_contents(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn init(&self, tls_only: bool) -> Result<(), TestkitError> {
        let pwfile = self.dir.path().join("pwfile");
        self.run_as.write(&pwfile, &format!("{PASSWORD}\n"))?;
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
        let command = describe(&cmd, self.run_as.name());
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(TestkitError::io(format!("running {command}")))?;
        check(command, out, None)?;
        fs::remove_file(&pwfile).map_err(TestkitError::io("removing the password file"))?;

        self.run_as.write(
            &self.data_dir.join("pg_hba.conf"),
            if tls_only { PG_HBA_TLS_ONLY } else { PG_HBA },
        )?;
        let conf = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| writeln!(f, "\ninclude '{CONF_FILE}'"))
            .map_err(TestkitError::io(format!("appending to {}", conf.display())))
    }

    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        self.run_as
            .apply(clean_env(&mut cmd))
            .current_dir(self.dir.path());
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<String, TestkitError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS])
            .args(args);
        let command = describe(&cmd, self.run_as.name());
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(TestkitError::io(format!("running {command}")))?;
        check(command, out, Some(&self.log_file))
    }
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("host", &HOST)
            .field("port", &self.port)
            .field("user", &SUPERUSER)
            .field("data_dir", &self.data_dir)
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        // A chaos test may have left it paused; SIGQUIT would then wait for SIGCONT.
        let _ = resume(pid);
        // `pg_ctl stop` returns once the pid file is gone, a moment before the postmaster
        // exits; waiting for the process lets a test assert that nothing is left running.
        let stopped = self.stop(StopMode::Immediate).is_ok();
        if !(stopped && wait_gone(pid, Duration::from_secs(10))) {
            let _ = signal(pid, Signal::Kill);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
}

/// Remove libpq's and the server's `PG*` variables (PGSSLMODE, PGOPTIONS, PGDATA, …) from
/// the test's environment, and pin messages to English, so that only what the testkit
/// says counts.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C")
}

/// The command line for messages; `Command`'s own `Debug` would print the environment,
/// and with it `PGPASSWORD`.
fn describe(cmd: &Command, as_user: Option<&str>) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    if let Some(name) = as_user {
        s.push_str(&format!(" (as {name})"));
    }
    s
}

/// stdout of a successful command, else an error with its stderr and the log tail.
fn check(
    command: String,
    out: std::process::Output,
    log: Option<&Path>,
) -> Result<String, TestkitError> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    }
    Err(TestkitError::Command {
        command,
        status: out.status.to_string(),
        stderr,
        log: log.map(|p| log_tail(p, LOG_TAIL_LINES)).unwrap_or_default(),
    })
}

/// A `postgresql.conf` value: single-quoted, with quotes and backslashes escaped.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq keyword/value: single-quoted, with quotes and backslashes escaped.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An SQL identifier: double-quoted, with double quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_parts_are_escaped_for_their_syntax() {
        assert_eq!(percent_encode("test_1"), "test_1");
        assert_eq!(percent_encode("a b/ñ"), "a%20b%2F%C3%B1");
        assert_eq!(conf_quote(r"it's a\b"), r"'it''s a\\b'");
        assert_eq!(conninfo_quote(r"it's a\b"), r"'it\'s a\\b'");
        assert_eq!(quote_ident(r#"Odd "T""#), r#""Odd ""T""""#);
    }

    #[test]
    fn described_commands_never_show_the_environment() {
        let mut cmd = Command::new("psql");
        cmd.arg("-X").env("PGPASSWORD", PASSWORD);
        let shown = describe(&cmd, Some("postgres"));
        assert_eq!(shown, "psql -X (as postgres)");
    }
}
