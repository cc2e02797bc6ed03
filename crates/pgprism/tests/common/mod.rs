//! Shared helpers of the `pgprism` end-to-end tests: run the real binary against a real
//! Postgres from the testkit and read its JSONL output.

#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pgprism_testkit::{ChildGuard, PgServer};
use serde_json::Value as Json;

/// The `pgprism` binary under test.
pub fn pgprism() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgprism"));
    cmd.env_remove("PGPRISM_SOURCE_DSN").env_remove("RUST_LOG");
    cmd
}

/// A fresh database with a publication `pub` for all tables and a slot `slot`.
pub struct Db<'a> {
    pub pg: &'a PgServer,
    pub name: String,
    pub dsn: String,
}

impl<'a> Db<'a> {
    /// A new database; `schema` runs first, then the publication and slot are created.
    pub fn new(pg: &'a PgServer, schema: &str) -> Db<'a> {
        let (name, dsn) = pg.fresh_database().expect("create database");
        let db = Db { pg, name, dsn };
        if !schema.is_empty() {
            db.sql(schema);
        }
        db.sql("CREATE PUBLICATION pub FOR ALL TABLES");
        db.sql("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')");
        db
    }

    /// Run SQL through psql; panics with psql's error on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.pg
            .psql(&self.name, sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\nSQL: {sql}"))
    }

    /// The current WAL insert position, as text.
    pub fn lsn(&self) -> String {
        self.sql("SELECT pg_current_wal_lsn()").trim().to_owned()
    }

    /// The slot's confirmed position.
    pub fn confirmed(&self, slot: &str) -> String {
        self.sql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .trim()
        .to_owned()
    }

    /// `pgprism tail` on this database's `slot`/`pub` with extra arguments.
    pub fn tail(&self, extra: &[&str]) -> Command {
        self.tail_on("slot", extra)
    }

    /// `pgprism tail` on another slot of this database, publication `pub`.
    pub fn tail_on(&self, slot: &str, extra: &[&str]) -> Command {
        let mut cmd = pgprism();
        cmd.args([
            "tail",
            "--dsn",
            &self.dsn,
            "--slot",
            slot,
            "--publication",
            "pub",
        ]);
        cmd.args(extra);
        cmd
    }

    /// Everything committed so far, printed by tail, as JSON objects.
    pub fn tail_all(&self, extra: &[&str]) -> Vec<Json> {
        let lsn = self.lsn();
        let mut args = vec!["--until-lsn", lsn.as_str()];
        args.extend_from_slice(extra);
        let out = run(self.tail(&args));
        assert!(
            out.status.success(),
            "tail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_lines(&out.stdout)
    }
}

/// Run a command with a time limit of two minutes.
pub fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgprism");
    let pid = child.id();
    let done = Arc::new(Mutex::new(false));
    let watchdog = {
        let done = done.clone();
        thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(120) {
                if *done.lock().unwrap() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = pgprism_testkit::signal(pid, pgprism_testkit::Signal::Kill);
        })
    };
    let out = child.wait_with_output().expect("wait for pgprism");
    *done.lock().unwrap() = true;
    let _ = watchdog.join();
    out
}

/// Parse JSONL output.
pub fn parse_lines(stdout: &[u8]) -> Vec<Json> {
    String::from_utf8(stdout.to_vec())
        .expect("tail output is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A running `tail` whose stdout lines are collected by a thread.
pub struct LiveTail {
    pub child: ChildGuard,
    pub lines: Arc<Mutex<Vec<Json>>>,
    pub stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl LiveTail {
    pub fn spawn(mut cmd: Command) -> LiveTail {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pgprism tail");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let errs = Arc::new(Mutex::new(String::new()));
        let l = lines.clone();
        let e = errs.clone();
        let readers = vec![
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let line = line.expect("read stdout");
                    let v: Json = serde_json::from_str(&line)
                        .unwrap_or_else(|err| panic!("bad JSON line {line:?}: {err}"));
                    l.lock().unwrap().push(v);
                }
            }),
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut s = e.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            }),
        ];
        LiveTail {
            child: ChildGuard::new(child),
            lines,
            stderr: errs,
            readers,
        }
    }

    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Wait until `pred` holds over the lines, panicking after `limit`.
    pub fn wait_for(&self, limit: Duration, what: &str, pred: impl Fn(&[Json]) -> bool) {
        let start = Instant::now();
        loop {
            if pred(&self.lines.lock().unwrap()) {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "timed out waiting for {what}; {} lines so far; stderr:\n{}",
                    self.count(),
                    self.stderr.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send SIGTERM and wait for a clean exit; returns all lines.
    pub fn stop(mut self) -> (Vec<Json>, String) {
        self.child
            .signal(pgprism_testkit::Signal::Term)
            .expect("SIGTERM tail");
        let status = self
            .child
            .wait_timeout(Duration::from_secs(30))
            .expect("tail did not stop within 30 s of SIGTERM");
        for r in self.readers.drain(..) {
            r.join().expect("reader thread");
        }
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "tail exited with {status}: {stderr}");
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        (lines, stderr)
    }
}

/// Rows of `sql` in `db` (with `TimeZone` UTC), one `|`-separated line each, sorted.
pub fn rows(pg: &PgServer, db: &str, sql: &str) -> Vec<String> {
    let mut r: Vec<String> = pg
        .psql(db, &format!("SET TimeZone = 'UTC'; {sql}"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    r.sort();
    r
}

/// Poll `f` every 100 ms until it gives a value; fail after `limit`, showing `context()`.
pub fn eventually_or<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
