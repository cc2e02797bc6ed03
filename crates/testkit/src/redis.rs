//! A throwaway `redis-server` on a free port of 127.0.0.1, in its own temp dir, killed on
//! drop.
//!
//! Readiness is a raw RESP `PING` answered by `+PONG` (no Redis client crate). Without
//! persistence (the default: `--save "" --appendonly no`) a kill loses everything; with
//! [`RedisBuilder::persistent`] the append-only file in the temp dir survives
//! [`RedisServer::kill`] and [`RedisServer::restart`]: Redis writes it before replying, so
//! an acknowledged write is in the OS cache when SIGKILL arrives. Redis runs fine as
//! root, so there is no user switch here.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::TestkitError;
use crate::server_log::{log_tail, start_on_free_port};

/// How long to wait for the first `+PONG`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of server log quoted in errors.
const LOG_TAIL_LINES: usize = 20;

/// Options for a [`RedisServer`]; from [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct RedisBuilder {
    persistent: bool,
    /// CA cert, server cert and key files, for a TLS port beside the plain one.
    tls: Option<[PathBuf; 3]>,
}

impl RedisBuilder {
    /// Keep data across kill and restart (append-only file in the temp dir).
    pub fn persistent(mut self, on: bool) -> RedisBuilder {
        self.persistent = on;
        self
    }

    /// Also serve TLS on a second port ([`RedisServer::tls_url`]), with `ca`'s server
    /// certificate; the plain port stays (readiness is checked there).
    pub fn tls(mut self, ca: &crate::TestCa) -> RedisBuilder {
        self.tls = Some([ca.ca_file(), ca.cert_file(), ca.key_file()]);
        self
    }

    /// Start the server and wait until it answers PING.
    pub fn start(self) -> Result<RedisServer, TestkitError> {
        let bin = redis_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("pgprism-redis-")
            .tempdir()
            .map_err(TestkitError::io("creating a temp dir for Redis"))?;
        let mut server = RedisServer {
            log_file: dir.path().join("redis.log"),
            dir,
            port: 0,
            persistent: self.persistent,
            tls: match self.tls {
                Some(files) => Some((crate::free_port()?, files)),
                None => None,
            },
            bin,
            child: Mutex::new(None),
        };
        let log_file = server.log_file.clone();
        server.port = start_on_free_port(&log_file, |port| {
            server.port = port;
            server.spawn()
        })?;
        Ok(server)
    }
}

/// A running `redis-server`; killed and its dir deleted on drop.
pub struct RedisServer {
    // Dropped after `Drop::drop` has killed the server.
    dir: TempDir,
    log_file: PathBuf,
    port: u16,
    persistent: bool,
    /// The TLS port and the CA, cert and key files.
    tls: Option<(u16, [PathBuf; 3])>,
    bin: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// A server without persistence on a free port.
    pub fn start() -> Result<RedisServer, TestkitError> {
        RedisServer::builder().start()
    }

    /// Options before starting.
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://localhost:TLS_PORT` (the certificate names `localhost`), when started
    /// with [`RedisBuilder::tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _)| format!("rediss://localhost:{port}"))
    }

    /// The server's pid, `None` after [`RedisServer::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    /// The server's temp dir (working dir, log, append-only file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL the server and reap it; a no-op when it is not running.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the server if it runs, then start it again on the same port and dir.
    pub fn restart(&self) -> Result<(), TestkitError> {
        self.kill();
        self.spawn()
    }

    /// What the server logged so far (all runs), for debugging a failing test.
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves nothing half-done: the Option is the state.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self) -> Result<(), TestkitError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(TestkitError::io(format!(
                "opening {}",
                self.log_file.display()
            )))?;
        let port = self.port.to_string();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1);
        if let Some((tls_port, [ca, cert, key])) = &self.tls {
            cmd.arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]);
        }
        if self.persistent {
            cmd.args(["--appendonly", "yes"]);
        } else {
            cmd.args(["--save", "", "--appendonly", "no"]);
        }
        let command = format!("{} --port {port}", self.bin.display());
        let child = cmd
            .spawn()
            .map_err(TestkitError::io(format!("running {command}")))?;
        *self.lock_child() = Some(child);
        self.wait_ready(&command)
    }

    /// Poll with PING until `+PONG`, failing early when the process exits.
    fn wait_ready(&self, command: &str) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            let exited = {
                let mut guard = self.lock_child();
                match guard.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        guard.take();
                        Some(status.to_string())
                    }
                    None => Some("killed".to_owned()),
                    _ => None,
                }
            };
            if let Some(status) = exited {
                return Err(TestkitError::Command {
                    command: command.to_owned(),
                    status,
                    stderr: String::new(),
                    log: log_tail(&self.log_file, LOG_TAIL_LINES),
                });
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(TestkitError::Timeout {
                    what: format!("redis-server on port {}", self.port),
                    secs: READY_TIMEOUT.as_secs(),
                    log: log_tail(&self.log_file, LOG_TAIL_LINES),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("persistent", &self.persistent)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a server on `port` answers a RESP `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// `redis-server` from PATH, else `/usr/bin/redis-server`.
fn redis_bin() -> Result<PathBuf, TestkitError> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"));
    on_path
        .chain([PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.is_file())
        .ok_or_else(|| TestkitError::Missing {
            what: "redis-server (looked on PATH and in /usr/bin)".to_owned(),
        })
}
