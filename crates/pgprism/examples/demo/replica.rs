//! The demo's `pgprism run` replicas: OS processes started with the example config plus
//! `PGPRISM_*` overrides, each logging to its own file; their `/readyz` and `/metrics`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pgprism_testkit::http::get;
use pgprism_testkit::{ChildGuard, Signal, free_port};

/// What every replica is started with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The release `pgprism` binary.
    pub bin: PathBuf,
    /// The config file (a copy of pgprism.example.toml).
    pub config: PathBuf,
    /// Source and Postgres sink.
    pub dsn: String,
    /// The Redis sink.
    pub redis_url: String,
    /// Where the logs go.
    pub dir: PathBuf,
}

/// One `pgprism run` process (or the slot of one that was killed).
#[derive(Debug)]
pub struct Replica {
    /// Its replica id (`leader.replica_id`), also the log file's name.
    pub name: &'static str,
    /// `http.bind` is 127.0.0.1 and this port.
    pub port: u16,
    /// Its stderr.
    pub log: PathBuf,
    /// How many times it was started: a counter metric starts from 0 each time.
    pub starts: u32,
    child: Option<ChildGuard>,
    launch: Launch,
}

/// What `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `ready (leader)`: leading and streaming.
    Leader,
    /// `ready (standby)`: campaigning on a working session.
    Standby,
    /// Answering, but not ready.
    NotReady,
    /// Not answering.
    Down,
}

impl Replica {
    /// Start a replica named `name` on a free port.
    pub fn start(name: &'static str, launch: &Launch) -> std::io::Result<Replica> {
        let mut r = Replica {
            name,
            port: free_port().map_err(std::io::Error::other)?,
            log: launch.dir.join(format!("{name}.log")),
            starts: 0,
            child: None,
            launch: launch.clone(),
        };
        r.spawn()?;
        Ok(r)
    }

    /// Start it again (same name, port and log file, appended to) after it was stopped.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.spawn()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.launch.bin);
        // The user's own settings must not leak into the demo's replicas.
        for (k, _) in std::env::vars() {
            if k.starts_with("PGPRISM_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["run", "-c"])
            .arg(&self.launch.config)
            .env("PGPRISM_SOURCE_DSN", &self.launch.dsn)
            .env("PGPRISM_SINKS_PG_DSN", &self.launch.dsn)
            .env("PGPRISM_SINKS_CACHE_URL", &self.launch.redis_url)
            .env("PGPRISM_HTTP_BIND", format!("127.0.0.1:{}", self.port))
            .env("PGPRISM_LEADER_REPLICA_ID", self.name)
            .env("PGPRISM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(ChildGuard::new(child));
        self.starts += 1;
        Ok(())
    }

    /// The pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid())
    }

    /// `kill -9`, and reap it.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.signal(Signal::Kill)?;
            c.wait_timeout(Duration::from_secs(5));
        }
        Ok(())
    }

    /// Send SIGTERM and hand over the process, to wait for its exit elsewhere.
    pub fn terminate(&mut self) -> std::io::Result<Option<ChildGuard>> {
        if let Some(c) = &self.child {
            c.signal(Signal::Term)?;
        }
        Ok(self.child.take())
    }

    /// What its `/readyz` says now.
    pub fn role(&self) -> Role {
        role(self.port)
    }

    /// Its `/metrics`, if it answers.
    pub fn metrics(&self) -> Option<Metrics> {
        get(self.port, "/metrics")
            .filter(|(s, _)| *s == 200)
            .map(|(_, text)| Metrics(text))
    }

    /// Lines of its log at WARN and ERROR level.
    pub fn warnings(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    }
}

/// What `/readyz` on 127.0.0.1:`port` says now.
pub fn role(port: u16) -> Role {
    match get(port, "/readyz") {
        None => Role::Down,
        Some((200, body)) if body.contains("leader") => Role::Leader,
        Some((200, _)) => Role::Standby,
        Some(_) => Role::NotReady,
    }
}

/// Poll `/readyz` of `ports` every 10 ms until one says `want`: (its index, how long it
/// took), or `None` after `limit`.
pub fn wait_for_role(ports: &[u16], want: Role, limit: Duration) -> Option<(usize, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(i) = ports.iter().position(|p| role(*p) == want) {
            return Some((i, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Wait up to `limit` for a replica terminated at `since` to exit: its status and how
/// long after `since` it was seen gone.
pub fn wait_exit(
    mut child: ChildGuard,
    since: Instant,
    limit: Duration,
) -> (Option<ExitStatus>, Duration) {
    let status = child.wait_timeout(limit);
    (status, since.elapsed())
}

/// A Prometheus text page.
#[derive(Debug)]
pub struct Metrics(String);

impl Metrics {
    /// The values of every series of `name`.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = f64> + 'a {
        self.0.lines().filter_map(move |l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse().ok()
        })
    }

    /// The sum over the series of `name` (a counter's total).
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut it = self.values(name).peekable();
        it.peek()?;
        Some(it.sum())
    }

    /// The largest value over the series of `name`.
    pub fn max(&self, name: &str) -> Option<f64> {
        self.values(name).reduce(f64::max)
    }
}
