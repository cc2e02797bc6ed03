//! Shared helpers of the end-to-end tests: the `pgprism` binary (built with its crash
//! points), its output collected line by line with the instant each line was read, a real
//! Postgres with the example shop and a Redis.

#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgprism_decoder::Lsn;
use pgprism_testkit::{ChildGuard, PgServer, RedisServer, Signal};

/// How long any one step may take on a loaded machine before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The `pgprism` binary beside this test's executable (`target/PROFILE/pgprism`), built
/// with the `failpoints` feature. The README's test command (`--workspace`) builds it so;
/// when this package runs alone (`cargo nextest run -p pgprism-tests`), cargo does not
/// build other packages' binaries, so one that lacks the crash points or is older than
/// the sources is built here first.
pub fn pgprism_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        // target/PROFILE/deps/chaos-HASH
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from target/PROFILE/deps");
        let bin = profile_dir.join("pgprism");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let has_failpoints = || {
            Command::new(&bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("(failpoints)"))
        };
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let stale = built.is_none_or(|b| newest_source(&root.join("crates")) > Some(b));
        if stale || !has_failpoints() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "pgprism", "--bin", "pgprism", "--features"]);
            build
                .arg("failpoints")
                .arg("--manifest-path")
                .arg(root.join("Cargo.toml"));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("running cargo build");
            assert!(
                status.success(),
                "cargo build -p pgprism --features failpoints: {status}"
            );
            assert!(
                has_failpoints(),
                "{} has no crash points after the build",
                bin.display()
            );
        }
        bin
    })
}

/// The newest modification time of a `.rs` or `Cargo.toml` file under `dir`.
fn newest_source(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let t = if path.is_dir() {
            if name == "target" || name == "fuzz" {
                continue;
            }
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") || name == "Cargo.toml" {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

/// A `pgprism` command: the binary under test, with none of the caller's `PGPRISM_…`
/// settings or failpoints leaking in.
pub fn pgprism() -> Command {
    let mut cmd = Command::new(pgprism_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PGPRISM_")) {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("FAILPOINTS").env_remove("RUST_LOG");
    cmd
}

/// A line a process printed, and when the test read it.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    /// Whose line: the life or replica that printed it.
    pub who: String,
    pub text: String,
}

/// Every line of every process (stdout and stderr), in the order read.
#[derive(Debug, Clone)]
pub struct Log {
    pub began: Instant,
    lines: Arc<Mutex<Vec<Line>>>,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            began: Instant::now(),
            lines: Arc::default(),
        }
    }
}

impl Log {
    /// The lines of `who`.
    pub fn of(&self, who: &str) -> Vec<Line> {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.who == who).cloned().collect()
    }

    /// How many lines there are.
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// The lines from the `from`th on.
    pub fn since(&self, from: usize) -> Vec<Line> {
        self.lines.lock().unwrap()[from..].to_vec()
    }

    /// The last lines, for failure messages.
    pub fn tail(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let skip = lines.len().saturating_sub(60);
        lines[skip..]
            .iter()
            .map(|l| {
                let ms = l.at.duration_since(self.began).as_millis();
                format!("  +{ms}ms {}: {}\n", l.who, l.text)
            })
            .collect()
    }

    /// A thread that copies `from` into the log line by line until EOF.
    pub fn read(&self, from: impl Read + Send + 'static, who: &str) {
        let log = self.clone();
        let who = who.to_owned();
        std::thread::spawn(move || {
            for text in BufReader::new(from).lines().map_while(Result::ok) {
                log.lines.lock().unwrap().push(Line {
                    at: Instant::now(),
                    who: who.clone(),
                    text,
                });
            }
        });
    }
}

/// Call `attempt` every `every` until it yields a value; after `PATIENCE`, fail saying
/// `what` with the tail of the processes' output.
pub async fn eventually<T>(
    log: &Log,
    every: Duration,
    what: impl Fn() -> String,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = attempt().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{}\n{}", what(), log.tail());
        tokio::time::sleep(every).await;
    }
}

/// `pgprism run -c CONFIG` as `who`, its output in `log`; `failpoints` arms crash points
/// (`FAILPOINTS`). Logs at info, flushes at debug. SIGKILLed when dropped.
pub fn start_run(config: &Path, who: &str, failpoints: Option<&str>, log: &Log) -> ChildGuard {
    let mut cmd = pgprism();
    cmd.args(["--log", "info,pgprism::run=debug", "run", "-c"])
        .arg(config);
    if let Some(fp) = failpoints {
        cmd.env("FAILPOINTS", fp);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pgprism run");
    log.read(child.stdout.take().unwrap(), who);
    log.read(child.stderr.take().unwrap(), who);
    ChildGuard::new(child)
}

/// SIGKILL `child` (`who` in the log) and reap it, asserting it died of the signal; the
/// instant just before the signal.
pub fn kill(child: &mut ChildGuard, who: &str, log: &Log) -> Instant {
    use std::os::unix::process::ExitStatusExt;
    let at = Instant::now();
    child.signal(Signal::Kill).unwrap();
    let status = child.wait_timeout(PATIENCE);
    assert!(
        status.is_some_and(|s| s.signal() == Some(9)),
        "{who} on SIGKILL: {status:?}\n{}",
        log.tail()
    );
    at
}

/// SIGTERM `child` (`who` in the log): the clean stop exits 0.
pub fn stop(child: &mut ChildGuard, who: &str, log: &Log) {
    child.signal(Signal::Term).unwrap();
    let status = child.wait_timeout(PATIENCE);
    assert!(
        status.is_some_and(|s| s.success()),
        "{who} on SIGTERM: {status:?}\n{}",
        log.tail()
    );
}

/// Random choices, from `PGPRISM_CHAOS_SEED` if set; the seed is printed to rerun a
/// failure with the same choices (the machine's timing still differs).
pub fn seeded_rng() -> (rand::rngs::StdRng, u64) {
    use rand::SeedableRng;
    let seed = std::env::var("PGPRISM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("PGPRISM_CHAOS_SEED={seed}");
    (rand::rngs::StdRng::seed_from_u64(seed), seed)
}

/// What Postgres logs when a client vanishes inside a transaction.
pub const CUT_OFF: &str = "unexpected EOF on client connection with an open transaction";

/// Wait until no session of a dead `pgprism run` is left on the server (all of them, and
/// only they, carry a `pgprism` application name): the server logs a cut-off transaction
/// ([`CUT_OFF`]) as its backend notices, which may be only once a long statement ends.
pub async fn sessions_gone(sql: &tokio_postgres::Client, log: &Log, when: &str) {
    let what = || format!("{when}: sessions of the dead pgprism run still open");
    eventually(log, Duration::from_millis(30), what, async || {
        let open: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgprism%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (open == 0).then_some(())
    })
    .await;
}

/// A database with the example shop on a real Postgres, and a Redis.
pub struct Env {
    pub pg: PgServer,
    pub redis: RedisServer,
    pub db: String,
    pub dsn: String,
}

impl Env {
    /// The shop's schema and read models, then `extra` SQL.
    pub fn shop(extra: &str) -> Env {
        use pgprism_testkit::shop::{READ_MODELS, SCHEMA};
        Env::new(&format!("{SCHEMA}\n{READ_MODELS}\n{extra}"))
    }

    /// A fresh database on a new server where `schema` ran, and a Redis.
    pub fn new(schema: &str) -> Env {
        let pg = PgServer::start().expect("start postgres");
        let redis = RedisServer::start().expect("start redis");
        let (db, dsn) = pg.fresh_database().expect("database");
        let env = Env { pg, redis, db, dsn };
        env.sql(schema);
        env
    }

    pub fn sql(&self, sql: &str) -> String {
        self.pg
            .psql(&self.db, sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\nSQL: {sql}"))
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let c = self.pg.client(&self.db).await.expect("client");
        c.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = ISO")
            .await
            .unwrap();
        c
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// A transactional marker: its commit ends after everything committed before it.
    pub fn marker(&self) -> Lsn {
        self.sql("SELECT pg_logical_emit_message(true, 'pgprism-test', 'mark')")
            .trim()
            .parse()
            .unwrap()
    }

    /// Rows of `sql` as text (NULL as "∅"), sorted.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        pgprism_testkit::shop::rows(&self.client().await, sql).await
    }

    /// Every Redis hash matching `pattern`, as rows of `columns`, sorted.
    pub async fn redis_rows(&self, pattern: &str, columns: &[&str]) -> Vec<Vec<String>> {
        pgprism_testkit::shop::redis_rows(&mut self.redis().await, pattern, columns).await
    }
}
