//! Live load: `pgprism run` as a process with the example configuration, writes arriving
//! steadily while it runs, freshness seen by an independent reader.
//!
//! Setup: a testkit Postgres and Redis, the example schema with 10,000 orders (3 items
//! each, 1,000 customers, 200 products) present and `ANALYZE`d before the first start.
//! The write is one order with three items in one statement
//! (`WITH o AS (INSERT INTO orders … RETURNING id) INSERT INTO order_items … SELECT …`),
//! driven by `pgbench` with 4 clients.
//!
//! 1. **Write cost**, paired per round: the unthrottled `pgbench` rate with pgprism
//!    stopped (the baseline: no CDC; the slot is inactive) and then with `pgprism run`
//!    streaming — each run as long; before the second, pgprism has caught up with what
//!    the first wrote. Ratio = with ÷ without, per round, median reported.
//! 2. **Ladder**: fixed rates at 10%, 25%, 50%, 75% and 100% of the median baseline rate,
//!    each for a rung's duration, with a probe on its own connections: every 50 ms it
//!    commits a marked order and polls `order_read_model` and the Redis hash `order:{id}`
//!    until both show it (commit → visible, p50/p99/max). Per rung also: the achieved
//!    rate, `pgprism_projection_lag_seconds` at the end and its maximum, rows per flush
//!    (`pgprism_batch_rows` sum ÷ count), pgprism's CPU (share of one core) and peak RSS.
//!
//! `PGPRISM_BENCH_SCALE` scales the durations (1.0: 20 s per write-cost run, 30 s per
//! rung), `PGPRISM_BENCH_ROUNDS` sets the write-cost rounds (default 3).
//!
//! Run: `cargo bench -p pgprism --bench live_lag`

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::shop_load::{self, ORDER_SCRIPT, ORDERS, PRELOAD, fill};
use pgprism_testkit::http::get;
use pgprism_testkit::{ChildGuard, PgServer, RedisServer, Signal};

const SCHEMA: &str = include_str!("../sql/schema.sql");
const READ_MODELS: &str = include_str!("../sql/read_models.sql");
const EXAMPLE: &str = include_str!("../pgprism.example.toml");

const CLIENTS: usize = 4;
/// The rungs, as shares of the baseline rate.
const LADDER: [f64; 5] = [0.10, 0.25, 0.50, 0.75, 1.00];
/// The probe commits one marked order this often.
const PROBE_EVERY: Duration = Duration::from_millis(50);

fn main() {
    let Some(bench) = common::start() else {
        return;
    };
    let redis = RedisServer::start().expect("start Redis");
    let db = "shop";
    let dsn = bench.pg.create_database(db).expect("create database");
    bench.pg.psql(db, SCHEMA).expect("schema");
    bench.pg.psql(db, READ_MODELS).expect("read models");
    bench.pg.psql(db, &fill(PRELOAD)).expect("preload");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    std::fs::write(&config, EXAMPLE).unwrap();
    let script = dir.path().join("order.sql");
    std::fs::write(&script, fill(ORDER_SCRIPT)).unwrap();
    let run_secs = (20.0 * bench.scale).max(3.0);
    let rung_secs = (30.0 * bench.scale).max(3.0);

    println!(
        "live_lag: {ORDERS} orders preloaded; pgbench {CLIENTS} clients, 1 order + 3 items per transaction; {run_secs:.0} s per write-cost run, {rung_secs:.0} s per rung"
    );
    let mut pgprism = Pgprism::start(&dsn, &redis.url(), &config, dir.path());
    pgprism.wait_caught_up(&bench.pg, db);

    // 1. Write cost, paired per round (`PGPRISM_BENCH_CAPACITY=TPS` skips it, for a quick
    // look at the ladder).
    let mut baseline_rates: Vec<f64> = common::env_number("PGPRISM_BENCH_CAPACITY")
        .into_iter()
        .collect();
    let mut ratios = Vec::new();
    let rounds = if baseline_rates.is_empty() {
        bench.rounds
    } else {
        0
    };
    for round in 1..=rounds {
        pgprism.stop();
        let without = pgbench(&bench.pg, db, &script, run_secs, None).tps;
        pgprism = Pgprism::start(&dsn, &redis.url(), &config, dir.path());
        pgprism.wait_caught_up(&bench.pg, db);
        let before = pgprism.sample();
        let with = pgbench(&bench.pg, db, &script, run_secs, None).tps;
        let lag_after = pgprism.lag();
        let after = pgprism.sample();
        let ratio = with / without;
        println!(
            "round {round}: unthrottled without CDC {without:.0} tx/s, with pgprism {with:.0} tx/s: {ratio:.2}×; rows per flush {:.1}; lag at the end {lag_after:.2} s",
            after.rows_per_flush_since(&before)
        );
        pgprism.wait_caught_up(&bench.pg, db);
        baseline_rates.push(without);
        ratios.push(ratio);
    }
    let capacity = median(&mut baseline_rates);
    if !ratios.is_empty() {
        println!(
            "write cost: median {:.2}× (with ÷ without CDC, paired per round); capacity {capacity:.0} tx/s",
            median(&mut ratios)
        );
    }

    // 2. The ladder.
    println!(
        "| rate | achieved tx/s | probe p50 | p99 | max | probes | lag at end | lag max | rows/flush | flush | pgprism CPU | RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    // `PGPRISM_BENCH_SHARES=0.5,1` runs only those rungs.
    let shares: Vec<f64> = std::env::var("PGPRISM_BENCH_SHARES").map_or(LADDER.to_vec(), |v| {
        v.split(',').filter_map(|s| s.trim().parse().ok()).collect()
    });
    for share in shares {
        let rate = (capacity * share).max(1.0);
        let before = pgprism.sample();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = {
            let stop = stop.clone();
            let (pg_dsn, redis_url) = (dsn.clone(), redis.url());
            bench
                .rt
                .spawn(async move { probe(&pg_dsn, &redis_url, &stop).await })
        };
        let watcher = pgprism.watch(Duration::from_secs_f64(rung_secs));
        let achieved = pgbench(&bench.pg, db, &script, rung_secs, Some(rate)).tps;
        let (lag_max, rss_max) = watcher.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let mut latencies = bench.rt.block_on(probe).unwrap();
        let after = pgprism.sample();
        let lag_end = pgprism.lag();
        let cpu = after.cpu_since(&before);
        latencies.sort();
        let q = |p: f64| -> String {
            if latencies.is_empty() {
                return "-".into();
            }
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            ms(latencies[i])
        };
        println!(
            "| {:.0}% ({rate:.0} tx/s) | {achieved:.0} | {} | {} | {} | {} | {lag_end:.2} s | {lag_max:.2} s | {:.1} | {:.1} ms | {:.0}% | {:.0} MiB |",
            share * 100.0,
            q(0.50),
            q(0.99),
            latencies.last().map_or("-".into(), |d| ms(*d)),
            latencies.len(),
            after.rows_per_flush_since(&before),
            after.flush_ms_since(&before),
            cpu * 100.0,
            rss_max as f64 / 1024.0,
        );
        pgprism.wait_caught_up(&bench.pg, db);
    }
    shop_load::assert_truth(&bench.pg, db);
    pgprism.stop();
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct PgbenchResult {
    tps: f64,
}

/// `pgbench` with the order script for `secs`, at `rate` tx/s when given.
fn pgbench(pg: &PgServer, db: &str, script: &Path, secs: f64, rate: Option<f64>) -> PgbenchResult {
    let bin = pgprism_testkit::bin_dir().unwrap().join("pgbench");
    let mut cmd = Command::new(bin);
    cmd.args(["-n", "-c", &CLIENTS.to_string(), "-j", "2", "-T"])
        .arg(format!("{}", secs.round() as u64))
        .arg("-f")
        .arg(script)
        .args([
            "-h",
            pg.host(),
            "-p",
            &pg.port().to_string(),
            "-U",
            pg.user(),
            db,
        ])
        .env("PGPASSWORD", pg.password());
    if let Some(r) = rate {
        cmd.args(["-R", &format!("{r:.0}")]);
    }
    let out = cmd.output().expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {text}"));
    PgbenchResult { tps }
}

/// Commit a marked order every [`PROBE_EVERY`] and time until `order_read_model` and the
/// Redis hash both show it.
async fn probe(dsn: &str, redis_url: &str, stop: &AtomicBool) -> Vec<Duration> {
    let (writer, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (reader, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let insert = writer
        .prepare(
            "INSERT INTO orders (customer_id, status)
             SELECT id, 'shipped' FROM bench.customers WHERE n = 1 RETURNING id::text",
        )
        .await
        .unwrap();
    let seen = reader
        .prepare("SELECT 1 FROM order_read_model WHERE id = $1::text::uuid")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let id: String = writer.query_one(&insert, &[]).await.unwrap().get(0);
        let committed = Instant::now();
        let key = format!("order:{id}");
        let (mut in_pg, mut in_redis) = (false, false);
        while !(in_pg && in_redis) {
            if committed.elapsed() > Duration::from_secs(120) {
                panic!("probe order {id} not visible after 120 s");
            }
            if !in_pg {
                in_pg = !reader.query(&seen, &[&id]).await.unwrap().is_empty();
            }
            if !in_redis {
                in_redis = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async::<i64>(&mut redis)
                    .await
                    .unwrap()
                    == 1;
            }
            if !(in_pg && in_redis) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        out.push(committed.elapsed());
    }
    out
}

/// `pgprism run` as a process, with its metrics endpoint.
struct Pgprism {
    child: Option<ChildGuard>,
    port: u16,
}

/// Counters read at one moment.
struct Sample {
    rows_sum: f64,
    rows_count: f64,
    flush_sum: f64,
    flush_count: f64,
    cpu_ticks: u64,
    at: Instant,
}

impl Sample {
    fn rows_per_flush_since(&self, before: &Sample) -> f64 {
        let n = self.rows_count - before.rows_count;
        if n > 0.0 {
            (self.rows_sum - before.rows_sum) / n
        } else {
            0.0
        }
    }

    /// Mean flush duration between the two samples.
    fn flush_ms_since(&self, before: &Sample) -> f64 {
        let n = self.flush_count - before.flush_count;
        if n > 0.0 {
            (self.flush_sum - before.flush_sum) / n * 1000.0
        } else {
            0.0
        }
    }

    /// Share of one core used between the two samples.
    fn cpu_since(&self, before: &Sample) -> f64 {
        let ticks = self.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
        let hz = 100.0; // USER_HZ on Linux
        ticks / hz / self.at.duration_since(before.at).as_secs_f64()
    }
}

impl Pgprism {
    fn start(dsn: &str, redis: &str, config: &Path, dir: &Path) -> Pgprism {
        let port = pgprism_testkit::free_port().unwrap();
        let log: PathBuf = dir.join("pgprism.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgprism"));
        // pgprism refuses `PGPRISM_…` variables that match no key: not the bench's own.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PGPRISM_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .args(["run", "-c"])
            .arg(config)
            .env("PGPRISM_SOURCE_DSN", dsn)
            .env("PGPRISM_SINKS_PG_DSN", dsn)
            .env("PGPRISM_SINKS_CACHE_URL", redis)
            .env("PGPRISM_HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("PGPRISM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .expect("start pgprism run");
        let p = Pgprism {
            child: Some(ChildGuard::new(child)),
            port,
        };
        let started = Instant::now();
        while get(port, "/readyz").is_none_or(|(status, _)| status != 200) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "pgprism did not become ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").pid()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal(Signal::Term).ok();
            child.wait_timeout(Duration::from_secs(30));
        }
    }

    fn metric(&self, name: &str) -> Vec<f64> {
        let Some((_, body)) = get(self.port, "/metrics") else {
            return Vec::new();
        };
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    }

    /// The largest projection lag the metrics show.
    fn lag(&self) -> f64 {
        self.metric("pgprism_projection_lag_seconds")
            .into_iter()
            .fold(0.0, f64::max)
    }

    fn sample(&self) -> Sample {
        let sum = |n: &str| self.metric(n).into_iter().sum::<f64>();
        Sample {
            rows_sum: sum("pgprism_batch_rows_sum"),
            rows_count: sum("pgprism_batch_rows_count"),
            flush_sum: sum("pgprism_batch_flush_duration_seconds_sum"),
            flush_count: sum("pgprism_batch_flush_duration_seconds_count"),
            cpu_ticks: cpu_ticks(self.pid()),
            at: Instant::now(),
        }
    }

    /// Until pgprism has applied everything written so far: the slot's confirmed position
    /// reaches the current WAL position (the replay window holds acknowledgements back, so
    /// the lag gauge is read too).
    fn wait_caught_up(&self, pg: &PgServer, db: &str) {
        let marker = pg
            .psql(
                db,
                "INSERT INTO orders (customer_id, status)
                 SELECT id, 'cancelled' FROM bench.customers WHERE n = 2 RETURNING id",
            )
            .unwrap();
        let marker = marker.trim();
        let started = Instant::now();
        loop {
            let n = pg
                .psql(
                    db,
                    &format!("SELECT count(*) FROM order_read_model WHERE id = '{marker}'"),
                )
                .unwrap();
            if n.trim() == "1" {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "pgprism did not catch up within 10 minutes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sample the lag gauge and the RSS for `d` on a thread: (max lag, max RSS in KiB).
    fn watch(&self, d: Duration) -> std::thread::JoinHandle<(f64, u64)> {
        let (port, pid) = (self.port, self.pid());
        std::thread::spawn(move || {
            let me = Pgprism { child: None, port };
            let end = Instant::now() + d;
            let (mut lag, mut rss) = (0.0f64, 0u64);
            while Instant::now() < end {
                lag = lag.max(me.lag());
                rss = rss.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(500));
            }
            (lag, rss)
        })
    }
}

impl Drop for Pgprism {
    fn drop(&mut self) {
        self.stop();
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; 11 and 12 after the ')'.
    get(11) + get(12)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
