//! Takeover after `kill -9` of the leading `pgprism run`, the way users run it: two
//! replicas of the release binary with the example configuration, writes arriving
//! steadily, freshness seen by an independent reader — idle, and with the machine loaded.
//!
//! Setup: a testkit Postgres and Redis, the example schema with 10,000 orders (3 items
//! each) present and `ANALYZE`d before the first start; the write of live_lag (one order
//! with three items per transaction) by `pgbench` at a steady 50 tx/s all along.
//!
//! Each trial kills the leader with SIGKILL at a random point of its heartbeat cycle, then
//! commits a change on its own connection (the name of a marker order's customer) and
//! polls the standby's `/readyz`, `order_read_model` and the Redis hash `order:{id}` until
//! the standby leads and both show the change. From the standby's own log (UTC
//! timestamps): kill → `leading` (the lock), `leading` → `streaming` and its steps
//! (`slot`: the dead leader's walsender lets go of the slot; `targets`: connect, stamp the
//! epoch on each target; `stream`: START_REPLICATION). Then a new replica joins as the
//! next standby.
//!
//! Baseline, in the same run and condition: what Postgres itself takes to hand an
//! advisory lock over — a `psql` session holds `pg_advisory_lock`, idle as pgprism's lock
//! session is, and is SIGKILLed while another session waits for the lock (kill →
//! granted). Ratio: kill → visible ÷ that handoff, medians.
//!
//! Conditions: **idle** (only the steady writes) and **loaded** (also `pgbench -c 2 -j 2`
//! TPC-B, unthrottled, against a second throwaway Postgres: both cores busy).
//!
//! `PGPRISM_BENCH_KILLS` sets the trials per condition (default 20 × `PGPRISM_BENCH_SCALE`);
//! the handoff is sampled 5 × `PGPRISM_BENCH_ROUNDS` times per condition (default 15).
//!
//! Run: `cargo bench -p pgprism --bench takeover`

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::shop_load;
use pgprism_testkit::http::get;
use pgprism_testkit::{ChildGuard, PgServer, RedisServer, Signal};

const SCHEMA: &str = include_str!("../sql/schema.sql");
const READ_MODELS: &str = include_str!("../sql/read_models.sql");
const EXAMPLE: &str = include_str!("../pgprism.example.toml");

const MARKER: &str = "00000000-0000-0000-0000-0000000000aa";
/// The steady write rate.
const RATE: u32 = 50;
/// How long one step may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    let Some(bench) = common::start() else {
        return;
    };
    let kills = common::env_number("PGPRISM_BENCH_KILLS")
        .unwrap_or(20.0 * bench.scale)
        .max(1.0) as usize;
    let handoffs = 5 * bench.rounds;
    let redis = RedisServer::start().expect("start Redis");
    let db = "shop";
    let dsn = bench.pg.create_database(db).expect("create database");
    bench.pg.psql(db, SCHEMA).expect("schema");
    bench.pg.psql(db, READ_MODELS).expect("read models");
    bench
        .pg
        .psql(db, &shop_load::fill(shop_load::PRELOAD))
        .expect("preload");
    bench
        .pg
        .psql(
            db,
            &format!(
                "INSERT INTO customers (id, name, email) VALUES ('{MARKER}', 'marker', 'm@example.com');
                 INSERT INTO orders (id, customer_id) VALUES ('{MARKER}', '{MARKER}');"
            ),
        )
        .expect("marker");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    std::fs::write(&config, EXAMPLE).unwrap();
    let script = dir.path().join("order.sql");
    std::fs::write(&script, shop_load::fill(shop_load::ORDER_SCRIPT)).unwrap();
    let writes = pgbench_background(
        &bench.pg,
        db,
        &["-c", "1", "-R", &RATE.to_string()],
        Some(&script),
    );
    let mut rng = Rng::seeded();
    let env = Replicas {
        dsn: &dsn,
        redis: redis.url(),
        config: &config,
        dir: dir.path(),
        next: 0,
    };
    println!(
        "takeover: {} orders preloaded, {RATE} orders/s written all along, example configuration, \
         two replicas (release build); {kills} kill -9s per condition",
        shop_load::ORDERS
    );
    println!(
        "| condition | lock handoff (Postgres) p50 | kill → leading p50 / p90 / max | leading → streaming p50 / max | slot / targets / stream p50 | kill → /readyz leader p50 / max | kill → visible (PG + Redis) p50 / p90 / max | visible ÷ handoff | WAL re-read at start p50 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut env = env;
    for loaded in [false, true] {
        let load = loaded.then(Load::start);
        let handoff: Vec<Duration> = (0..handoffs)
            .map(|_| bench.rt.block_on(lock_handoff(&bench.pg, db)))
            .collect();
        let trials = bench.rt.block_on(trials(&mut env, kills, &mut rng));
        drop(load);
        report(if loaded { "loaded" } else { "idle" }, &handoff, &trials);
    }
    drop(writes);
    shop_load::assert_truth(&bench.pg, db);
}

/// One kill and what followed, each from the SIGKILL.
struct Trial {
    leading: Duration,
    streaming: Duration,
    /// `slot`, `targets`, `stream` in ms, from the `streaming` line.
    steps: [u64; 3],
    ready: Duration,
    visible: Duration,
    /// WAL the new leader's walsender decodes again before the first new change: from the
    /// slot's restart position (held back by the replay window) to the targets' offsets.
    reread: f64,
}

/// `kills` trials: kill the leader, time the standby's takeover and the change after the
/// kill, start the next standby.
async fn trials(env: &mut Replicas<'_>, kills: usize, rng: &mut Rng) -> Vec<Trial> {
    let (probe, conn) = tokio_postgres::connect(env.dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut redis = redis::Client::open(env.redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut leader = env.start();
    leader.wait_for("leader");
    let mut standby = env.start();
    standby.wait_for("standby");
    let mut out = Vec::new();
    for k in 0..kills {
        // Anywhere in the leader's 1 s heartbeat cycle, after the standby settled.
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(1000))).await;
        let name = format!("marker {k} {}", rng.below(1 << 30));
        let (killed_wall, killed) = (SystemTime::now(), Instant::now());
        leader.child.signal(Signal::Kill).unwrap();
        let reread: f64 = probe
            .query_one(
                "SELECT coalesce((SELECT min(resume_lsn) FROM pgprism.offsets WHERE resume_lsn > '0/0')
                                 - restart_lsn, 0)::float8
                   FROM pg_replication_slots WHERE slot_name = 'pgprism'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        probe
            .execute(
                "UPDATE customers SET name = $1 WHERE id = $2::text::uuid",
                &[&name, &MARKER],
            )
            .await
            .unwrap();
        let (mut ready, mut in_pg, mut in_redis) = (None, None, None);
        while ready.is_none() || in_pg.is_none() || in_redis.is_none() {
            assert!(
                killed.elapsed() < PATIENCE,
                "no takeover after {PATIENCE:?}:\n{}",
                standby.log()
            );
            if ready.is_none() && standby.is("leader") {
                ready = Some(killed.elapsed());
            }
            if in_pg.is_none() {
                let row = probe
                    .query_opt(
                        "SELECT 1 FROM order_read_model WHERE id = $1::text::uuid AND customer_name = $2",
                        &[&MARKER, &name],
                    )
                    .await
                    .unwrap();
                in_pg = row.map(|_| killed.elapsed());
            }
            if in_redis.is_none() {
                let seen: Option<String> = redis::cmd("HGET")
                    .arg(format!("order:{MARKER}"))
                    .arg("customer_name")
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                in_redis = (seen.as_deref() == Some(name.as_str())).then(|| killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let log = standby.log();
        let at = |what: &str| -> (Duration, String) {
            let line = log
                .lines()
                .rev()
                .find(|l| l.contains(what))
                .unwrap_or_else(|| panic!("no {what:?} line:\n{log}"));
            (since(killed_wall, line), line.to_owned())
        };
        let (leading, lead_line) = at(" leading pipeline=");
        assert!(
            lead_line.contains("via=lock-released"),
            "the standby did not take the released lock: {lead_line}"
        );
        let (streaming, stream_line) = at(" streaming ");
        let step = |name: &str| -> u64 {
            stream_line
                .split(&format!("{name}="))
                .nth(1)
                .and_then(|r| r.split([',', ' ']).next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {stream_line}"))
        };
        out.push(Trial {
            leading,
            streaming: streaming.saturating_sub(leading),
            steps: [step("slot_ms"), step("targets_ms"), step("stream_ms")],
            ready: ready.unwrap(),
            visible: in_pg.unwrap().max(in_redis.unwrap()),
            reread,
        });
        leader
            .child
            .wait_timeout(PATIENCE)
            .expect("the killed leader is gone");
        let next = env.start();
        next.wait_for("standby");
        leader = std::mem::replace(&mut standby, next);
    }
    leader.child.signal(Signal::Term).ok();
    standby.child.signal(Signal::Term).ok();
    leader.child.wait_timeout(PATIENCE);
    standby.child.wait_timeout(PATIENCE);
    out
}

/// The time from `wall` to the UTC timestamp that starts a log line
/// (`2026-12-07T23:21:54.339569Z  INFO …`).
fn since(wall: SystemTime, line: &str) -> Duration {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp
        .split('T')
        .nth(1)
        .and_then(|t| t.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line}"));
    let mut parts = time.split(':');
    let mut next = || -> f64 { parts.next().and_then(|p| p.parse().ok()).unwrap() };
    let of_day = next() * 3600.0 + next() * 60.0 + next();
    let wall_of_day = wall.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() % 86_400.0;
    // Around midnight the line's day may be the next one.
    let d = (of_day - wall_of_day).rem_euclid(86_400.0);
    Duration::from_secs_f64(if d > 43_200.0 { 0.0 } else { d })
}

/// What Postgres takes to hand an advisory lock over when its idle holder's process dies.
async fn lock_handoff(pg: &PgServer, db: &str) -> Duration {
    const KEY: i64 = 4242;
    let mut holder = Command::new(pgprism_testkit::bin_dir().unwrap().join("psql"))
        .args(["-X", "-q", "-d"])
        .arg(format!(
            "host={} port={} user={} dbname={db}",
            pg.host(),
            pg.port(),
            pg.user()
        ))
        .env("PGPASSWORD", pg.password())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "SELECT pg_advisory_lock({KEY});").unwrap();
    stdin.flush().unwrap();
    let mut holder = ChildGuard::new(holder);
    let watcher = pg.client(db).await.unwrap();
    let waiting = async |granted: bool| {
        let started = Instant::now();
        loop {
            let n: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted = $2",
                    &[&(KEY as u32), &granted],
                )
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                return;
            }
            assert!(started.elapsed() < PATIENCE, "the lock never showed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    waiting(true).await;
    let waiter = pg.client(db).await.unwrap();
    let granted = tokio::spawn(async move {
        waiter
            .execute("SELECT pg_advisory_lock($1)", &[&KEY])
            .await
            .unwrap();
        let at = Instant::now();
        waiter
            .execute("SELECT pg_advisory_unlock($1)", &[&KEY])
            .await
            .unwrap();
        at
    });
    waiting(false).await;
    // Idle, like pgprism's lock session between heartbeats.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let killed = Instant::now();
    holder.signal(Signal::Kill).unwrap();
    let at = granted.await.unwrap();
    drop(stdin);
    holder.wait_timeout(PATIENCE);
    at.duration_since(killed)
}

fn report(condition: &str, handoff: &[Duration], trials: &[Trial]) {
    let pick = |f: &dyn Fn(&Trial) -> Duration| -> Vec<Duration> {
        let mut v: Vec<Duration> = trials.iter().map(f).collect();
        v.sort();
        v
    };
    let q = |v: &[Duration], p: f64| -> Duration {
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    let mut handoff = handoff.to_vec();
    handoff.sort();
    let leading = pick(&|t| t.leading);
    let streaming = pick(&|t| t.streaming);
    let ready = pick(&|t| t.ready);
    let visible = pick(&|t| t.visible);
    let step = |i: usize| {
        let mut v: Vec<u64> = trials.iter().map(|t| t.steps[i]).collect();
        v.sort();
        v[v.len() / 2]
    };
    let mut reread: Vec<f64> = trials.iter().map(|t| t.reread).collect();
    reread.sort_by(f64::total_cmp);
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "| {condition} | {:.1} ms | {} / {} / {} ms | {} / {} ms | {} / {} / {} ms | {} / {} ms | {} / {} / {} ms | {:.0}× | {:.1} / {:.1} MiB |",
        q(&handoff, 0.5).as_secs_f64() * 1000.0,
        ms(q(&leading, 0.5)),
        ms(q(&leading, 0.9)),
        ms(q(&leading, 1.0)),
        ms(q(&streaming, 0.5)),
        ms(q(&streaming, 1.0)),
        step(0),
        step(1),
        step(2),
        ms(q(&ready, 0.5)),
        ms(q(&ready, 1.0)),
        ms(q(&visible, 0.5)),
        ms(q(&visible, 0.9)),
        ms(q(&visible, 1.0)),
        q(&visible, 0.5).as_secs_f64() / q(&handoff, 0.5).as_secs_f64().max(1e-6),
        mib(reread[reread.len() / 2]),
        mib(reread[reread.len() - 1]),
    );
}

/// The replicas' shared settings; each gets its own HTTP port, log and name.
struct Replicas<'a> {
    dsn: &'a str,
    redis: String,
    config: &'a Path,
    dir: &'a Path,
    next: usize,
}

impl Replicas<'_> {
    fn start(&mut self) -> Replica {
        let name = format!("r{}", self.next);
        self.next += 1;
        let port = pgprism_testkit::free_port().unwrap();
        let log = self.dir.join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgprism"));
        // pgprism refuses `PGPRISM_…` variables that match no key: not the bench's own.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PGPRISM_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .args(["run", "-c"])
            .arg(self.config)
            .env("PGPRISM_SOURCE_DSN", self.dsn)
            .env("PGPRISM_SINKS_PG_DSN", self.dsn)
            .env("PGPRISM_SINKS_CACHE_URL", &self.redis)
            .env("PGPRISM_HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("PGPRISM_LEADER_REPLICA_ID", &name)
            .env("PGPRISM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start pgprism run");
        Replica {
            child: ChildGuard::new(child),
            port,
            log,
        }
    }
}

/// One `pgprism run`.
struct Replica {
    child: ChildGuard,
    port: u16,
    log: PathBuf,
}

impl Replica {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether `/readyz` answers 200 naming `role`.
    fn is(&self, role: &str) -> bool {
        get(self.port, "/readyz").is_some_and(|(s, b)| s == 200 && b.contains(role))
    }

    fn wait_for(&self, role: &str) {
        let started = Instant::now();
        while !self.is(role) {
            assert!(
                started.elapsed() < PATIENCE,
                "never {role}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The load beside the loaded condition: TPC-B, unthrottled, on a second Postgres.
struct Load {
    _pgbench: ChildGuard,
    _pg: PgServer,
}

impl Load {
    fn start() -> Load {
        let pg = PgServer::start().expect("start the load's Postgres");
        pg.create_database("load").unwrap();
        let init = Command::new(pgprism_testkit::bin_dir().unwrap().join("pgbench"))
            .args(["-i", "-q", "-s", "5"])
            .args(connection(&pg, "load"))
            .env("PGPASSWORD", pg.password())
            .output()
            .expect("pgbench -i");
        assert!(init.status.success(), "{init:?}");
        let pgbench = pgbench_background(&pg, "load", &["-c", "2", "-j", "2"], None);
        Load {
            _pgbench: pgbench,
            _pg: pg,
        }
    }
}

fn connection(pg: &PgServer, db: &str) -> Vec<String> {
    vec![
        "-h".into(),
        pg.host().into(),
        "-p".into(),
        pg.port().to_string(),
        "-U".into(),
        pg.user().into(),
        db.into(),
    ]
}

/// `pgbench` with `args` (and `script`, else TPC-B) until dropped.
fn pgbench_background(pg: &PgServer, db: &str, args: &[&str], script: Option<&Path>) -> ChildGuard {
    let mut cmd = Command::new(pgprism_testkit::bin_dir().unwrap().join("pgbench"));
    cmd.args(["-n", "-T", "100000"]).args(args);
    if let Some(s) = script {
        cmd.arg("-f").arg(s);
    }
    let child = cmd
        .args(connection(pg, db))
        .env("PGPASSWORD", pg.password())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench");
    ChildGuard::new(child)
}

/// Random kill moments (xorshift; the seed is printed).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            | 1;
        println!("seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
