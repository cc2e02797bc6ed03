//! `pgprism run` end to end: two replicas as OS processes against a real Postgres and
//! Redis, the example config with environment overrides, an order workload, the leader
//! stopped with SIGTERM mid-run, the standby carrying on, and the read models equal to
//! the ground truth at the end. Plus `/metrics`, `/readyz`, and config errors.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{eventually_or, pgprism, rows};
use pgprism_testkit::http::get;
use pgprism_testkit::{ChildGuard, PgServer, RedisServer, Signal};

const SCHEMA: &str = include_str!("../../../sql/schema.sql");
const READ_MODELS: &str = include_str!("../../../sql/read_models.sql");
const EXAMPLE: &str = include_str!("../../../pgprism.example.toml");

/// The DESIGN.md metric names every leader must expose.
const METRICS: [&str; 9] = [
    "pgprism_projection_lag_seconds",
    "pgprism_replication_lag_bytes",
    "pgprism_slot_retained_wal_bytes",
    "pgprism_changes_total",
    "pgprism_batch_flush_duration_seconds",
    "pgprism_batch_rows",
    "pgprism_dead_letters_total",
    "pgprism_is_leader",
    "pgprism_epoch",
];

fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    eventually_or(what, limit, &mut f, String::new)
}

/// Every order's Redis hash (`order:ID`) agrees with `order_read_model_truth`.
async fn redis_orders_match_the_truth(
    pg: &PgServer,
    db: &str,
    conn: &mut redis::aio::MultiplexedConnection,
) {
    let truth = rows(
        pg,
        db,
        "SELECT id, status, item_count, total_cents FROM order_read_model_truth",
    );
    assert!(!truth.is_empty(), "no orders");
    for line in truth {
        let f: Vec<&str> = line.split('|').collect();
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("order:{}", f[0]))
            .query_async(conn)
            .await
            .unwrap();
        let field = |k: &str| h.get(k).map(String::as_str);
        assert_eq!(
            [field("status"), field("item_count"), field("total_cents")],
            [Some(f[1]), Some(f[2]), Some(f[3])],
            "order:{}",
            f[0]
        );
    }
}

struct Replica {
    name: String,
    child: ChildGuard,
    port: u16,
    log: std::path::PathBuf,
}

fn start_replica(name: &str, config: &Path, dsn: &str, redis: &str, dir: &Path) -> Replica {
    let port = pgprism_testkit::free_port().unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = pgprism()
        .args(["run", "-c"])
        .arg(config)
        .env("PGPRISM_SOURCE_DSN", dsn)
        .env("PGPRISM_SINKS_PG_DSN", dsn)
        .env("PGPRISM_SINKS_CACHE_URL", redis)
        .env("PGPRISM_HTTP_BIND", format!("127.0.0.1:{port}"))
        .env("PGPRISM_LEADER_REPLICA_ID", name)
        // A target failing this long is set aside, so the others go on.
        .env("PGPRISM_BATCH_DETACH_AFTER", "2s")
        .env("PGPRISM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start pgprism run");
    Replica {
        name: name.to_owned(),
        child: ChildGuard::new(child),
        port,
        log,
    }
}

impl Replica {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How this replica's latest `leading` line says the lock became free (its `via=`):
    /// `lock-released` when the previous leader's session ended by itself, before its
    /// heartbeat was `takeover_after` old.
    fn took_lock_via(&self) -> Option<String> {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains(" leading pipeline="))?;
        Some(
            line.split(" via=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_owned(),
        )
    }

    fn ready(&self) -> Option<String> {
        get(self.port, "/readyz").and_then(|(s, b)| (s == 200).then_some(b))
    }

    /// Whether `/readyz` answers 200 naming `role` (`leader` or `standby`).
    fn is(&self, role: &str) -> bool {
        self.ready().is_some_and(|b| b.contains(role))
    }

    /// Wait up to `limit` until `/readyz` names `role`; on failure show the replica's log.
    fn wait_for(&self, role: &str, limit: Duration) {
        eventually_or(
            &format!("{} is {role}", self.name),
            limit,
            || self.is(role).then_some(()),
            || self.log(),
        );
    }
}

#[test]
fn a_slow_recompute_is_logged_once_with_its_likely_cause() {
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(&db, &format!("{SCHEMA}\n{READ_MODELS}")).unwrap();
    // Existing orders, loaded in bulk and never analyzed.
    pg.psql(
        &db,
        "ALTER TABLE orders SET (autovacuum_enabled = off);
         INSERT INTO customers (name, email) VALUES ('c', 'c@example.com');
         INSERT INTO orders (customer_id) SELECT id FROM customers, generate_series(1, 500);
         ANALYZE customers",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    // A query that takes 2 ms per key, whatever the plan.
    let slow = EXAMPLE.replace(
        " WHERE o.id = ANY($1)\n",
        " WHERE o.id = ANY($1) AND pg_sleep(0.002)::text IS NOT NULL\n",
    );
    assert_ne!(slow, EXAMPLE);
    std::fs::write(&config, slow).unwrap();
    let a = start_replica("a", &config, &dsn, &redis.url(), dir.path());
    a.wait_for("leader", Duration::from_secs(30));
    let confirmed = || {
        rows(
            &pg,
            &db,
            "SELECT count(*) FROM order_read_model WHERE status = 'confirmed'",
        )
        .first()
        .cloned()
        .unwrap_or_default()
    };
    // Two batches of 50 orders each.
    for want in ["50", "100"] {
        pg.psql(
            &db,
            "UPDATE orders SET status = 'confirmed'
              WHERE id IN (SELECT id FROM orders WHERE status = 'pending' LIMIT 50)",
        )
        .unwrap();
        eventually_or(
            "the batch is applied",
            Duration::from_secs(30),
            || (confirmed() == want).then_some(()),
            || a.log(),
        );
    }
    let log = a.log();
    assert_eq!(
        log.matches("the projection query is slow").count(),
        1,
        "logged once:\n{log}"
    );
    assert!(
        log.contains("public.orders never analyzed") && log.contains("fix: ANALYZE public.orders"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_survive_a_sigterm_of_the_leader_and_the_read_models_match_the_truth() {
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(&db, &format!("{SCHEMA}\n{READ_MODELS}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    std::fs::write(&config, EXAMPLE).unwrap();

    let a = start_replica("a", &config, &dsn, &redis.url(), dir.path());
    a.wait_for("leader", Duration::from_secs(30));
    let mut b = start_replica("b", &config, &dsn, &redis.url(), dir.path());
    b.wait_for("standby", Duration::from_secs(30));

    let writer = pg.client(&db).await.unwrap();
    let workload = tokio::spawn(async move {
        pgprism_testkit::shop::workload(&writer, 1_200, 21).await;
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The flush metrics appear with the leader's first flush of the workload: wait for
    // them rather than sample once.
    let (status, metrics) = eventually_or(
        "the leader exposes every DESIGN.md metric",
        Duration::from_secs(30),
        || get(a.port, "/metrics").filter(|(_, m)| METRICS.iter().all(|n| m.contains(n))),
        || get(a.port, "/metrics").map(|(_, m)| m).unwrap_or_default(),
    );
    assert_eq!(status, 200);
    for name in METRICS {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(metrics.contains("pgprism_is_leader 1"), "{metrics}");

    // SIGTERM the leader mid-run: it drains and exits 0; b takes over.
    let mut a = a;
    a.child.signal(Signal::Term).unwrap();
    let stopped = Instant::now();
    let code = a
        .child
        .wait_timeout(Duration::from_secs(15))
        .expect("a exits within its shutdown deadline");
    assert!(code.success(), "a exited with {code:?}:\n{}", a.log());
    assert!(a.log().contains("lock released"), "{}", a.log());
    b.wait_for("leader", Duration::from_secs(30));
    let takeover = stopped.elapsed();
    eprintln!("standby streaming {takeover:?} after SIGTERM of the leader");
    // The clean stop released the lock: B took it without waiting out A's heartbeat.
    assert_eq!(
        b.took_lock_via().as_deref(),
        Some("lock-released"),
        "{}",
        b.log()
    );

    workload.await.unwrap();
    let truth = "SELECT * FROM order_read_model_truth";
    let model = "SELECT * FROM order_read_model";
    let start = Instant::now();
    loop {
        let (t, m) = (rows(&pg, &db, truth), rows(&pg, &db, model));
        if t == m {
            assert!(t.len() > 100, "orders left: {}", t.len());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "order_read_model never matched the truth ({} vs {} rows)\n{}",
            m.len(),
            t.len(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Redis hashes agree with the ground truth too.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis_orders_match_the_truth(&pg, &db, &mut conn).await;
    let dead = pg
        .psql(&db, "SELECT count(*) FROM pgprism.dead_letters")
        .unwrap();
    assert_eq!(dead.trim(), "0");
    let (_, metrics) = get(b.port, "/metrics").expect("metrics of the new leader");
    assert!(metrics.contains("pgprism_is_leader 1"), "{metrics}");
    // Caught up and idle: every target's lag drops to 0 (the gauge is refreshed once a
    // second).
    eventually_or(
        "every target's lag is 0 once caught up",
        Duration::from_secs(10),
        || {
            let (_, metrics) = get(b.port, "/metrics")?;
            let lag: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("pgprism_projection_lag_seconds{"))
                .collect();
            (!lag.is_empty() && lag.iter().all(|l| l.ends_with(" 0"))).then_some(())
        },
        || get(b.port, "/metrics").map(|(_, m)| m).unwrap_or_default(),
    );

    // Stuck: Redis goes away, a change waits, and the lag grows until Redis is back;
    // meanwhile Postgres gets it (Redis is set aside after `batch.detach_after`), and
    // Redis gets it once back.
    let lag_now = |port: u16| -> f64 {
        let (_, m) = get(port, "/metrics").unwrap();
        m.lines()
            .filter(|l| l.starts_with("pgprism_projection_lag_seconds{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, f64::max)
    };
    redis.kill();
    pg.psql(&db, "UPDATE customers SET name = name || ' (stuck)'")
        .unwrap();
    // The gauge is refreshed once a second on a loaded machine: wait for the values
    // rather than sampling at fixed moments.
    let first = eventually_or(
        "the lag passes 1 s while Redis is down",
        Duration::from_secs(20),
        || Some(lag_now(b.port)).filter(|&l| l >= 1.0),
        || b.log(),
    );
    let second = eventually_or(
        "the lag keeps growing while Redis is down",
        Duration::from_secs(20),
        || Some(lag_now(b.port)).filter(|&l| l >= first + 1.0),
        || b.log(),
    );
    eprintln!("lag while stuck: {first:.2} s, then {second:.2} s");
    // A later change: with a flush waiting for Redis nothing after it would be applied
    // anywhere; set aside, Redis no longer holds Postgres back.
    pg.psql(&db, "UPDATE customers SET name = name || ' (later)'")
        .unwrap();
    eventually_or(
        "order_read_model follows the rename while Redis is down",
        Duration::from_secs(30),
        || (rows(&pg, &db, model) == rows(&pg, &db, truth)).then_some(()),
        || b.log(),
    );
    assert!(
        lag_now(b.port) >= second,
        "the lag counts what Redis still lacks"
    );
    redis.restart().unwrap();
    eventually(
        "lag back to 0 once Redis is back",
        Duration::from_secs(30),
        || (lag_now(b.port) == 0.0).then_some(()),
    );
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let names = pg
        .psql(
            &db,
            "SELECT id, coalesce(customer_name, '') FROM order_read_model_truth",
        )
        .unwrap();
    let start = Instant::now();
    for line in names.lines() {
        let (id, name) = line.split_once('|').unwrap();
        loop {
            let got: Option<String> = redis::cmd("HGET")
                .arg(format!("order:{id}"))
                .arg("customer_name")
                .query_async(&mut conn)
                .await
                .unwrap();
            if got.as_deref().unwrap_or("") == name {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "order:{id} customer_name {got:?}, want {name:?}\n{}",
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    b.child.signal(Signal::Term).unwrap();
    let code = b
        .child
        .wait_timeout(Duration::from_secs(15))
        .expect("b exits");
    assert!(code.success(), "{}", b.log());
}

#[test]
fn config_errors_name_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            EXAMPLE.replace("[http]", "[http]\nport = 80"),
            "config: http.port: unknown field `port`",
        ),
        (
            EXAMPLE.replace("max_age = \"200ms\"", "max_age = \"a while\""),
            "config: batch.max_age:",
        ),
        (
            EXAMPLE.replace(
                "sink = \"cache\"\nkey = \"customer",
                "sink = \"redis\"\nkey = \"customer",
            ),
            "config: projections[1].targets[0].sink: no sink named \"redis\" (defined: cache, pg)",
        ),
        // Typed where they are read: a DSN, a size, an address.
        (
            EXAMPLE.replace(
                "[sinks.pg]\nkind = \"postgres\"\ndsn = \"postgres://pgprism@localhost:5432/shop\"",
                "[sinks.pg]\nkind = \"postgres\"\ndsn = \"postgres://pgprism:hunter2@localhost:notaport/shop\"",
            ),
            "config: sinks.pg.dsn: invalid DSN postgres://pgprism:***@localhost:notaport/shop",
        ),
        (
            EXAMPLE.replace("replay_window = \"64MB\"", "replay_window = \"lots\""),
            "config: leader.replay_window: \"lots\" is not a size like 0, 512kB, 64MB or 2GB",
        ),
        (
            EXAMPLE.replace("bind = \"127.0.0.1:9187\"", "bind = \"localhost\""),
            "config: http.bind: \"localhost\" is not an address like 127.0.0.1:9187",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = pgprism().args(["run", "-c"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
        assert!(!err.contains("hunter2"), "the password shown: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
}

/// Existing orders (200,000 unless `PGPRISM_TEST_BACKFILL_ORDERS` says otherwise) are
/// loaded into every read model while the application writes, through three kill -9s of
/// the leader mid-backfill: each new life resumes exactly where the committed chunks end
/// (none is read again), and the read models end equal to the ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_are_backfilled_across_kill_9s_without_reading_a_committed_chunk_again() {
    let orders: usize = std::env::var("PGPRISM_TEST_BACKFILL_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &db,
        &format!(
            "{SCHEMA}\n{READ_MODELS}\n{}",
            pgprism_testkit::shop::seed_sql(orders)
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    // Chunks of 2% of the orders, so the kills fall between many of them.
    std::fs::write(
        &config,
        EXAMPLE.replace(
            "chunk_size = 10000",
            &format!("chunk_size = {}", (orders / 50).max(100)),
        ),
    )
    .unwrap();
    // (rows, chunks) committed; nothing before the first start creates pgprism's tables.
    let committed = || -> (u64, u64) {
        let state = pg
            .psql(
                &db,
                "SELECT coalesce(backfill::json->>'rows', '0') || ' ' || coalesce(backfill::json->>'chunks', '0')
                   FROM pgprism.offsets WHERE sink = 'order_read_model.pg'",
            )
            .unwrap_or_default();
        let mut f = state
            .lines()
            .next()
            .map(|s| {
                s.split(' ')
                    .map(|v| v.parse().unwrap_or(0))
                    .collect::<Vec<u64>>()
            })
            .unwrap_or_default();
        f.resize(2, 0);
        (f[0], f[1])
    };
    let mut workload: Option<tokio::task::JoinHandle<()>> = None;
    let mut resumed = Vec::new();
    let mut last = 0;
    let began = Instant::now();
    for life in 0..4 {
        eprintln!("{:?}: life {life} starts", began.elapsed());
        let replica = start_replica(&format!("r{life}"), &config, &dsn, &redis.url(), dir.path());
        let (rows_then, _) = committed();
        // The new life says where the pipeline resumes: exactly at the committed chunks.
        let ready = eventually_or(
            "the leader is ready",
            Duration::from_secs(60),
            || {
                replica
                    .log()
                    .lines()
                    .find(|l| l.contains("target ready") && l.contains("order_read_model.pg "))
                    .map(str::to_owned)
            },
            || replica.log(),
        );
        if life == 0 {
            // The application writes throughout, from the first leader's start on.
            let client = pg.client(&db).await.unwrap();
            workload = Some(tokio::spawn(async move {
                pgprism_testkit::shop::workload_on_existing(&client, 1_500, 33).await;
            }));
        }
        if life > 0 {
            assert!(
                ready.contains(&format!("backfill_rows={rows_then}")),
                "life {life} resumes at the {rows_then} rows committed before: {ready}"
            );
            resumed.push(rows_then);
        }
        if life == 3 {
            // The last life finishes; the backfill's metrics are on /metrics meanwhile.
            let (_, m) = eventually_or(
                "backfill metrics",
                Duration::from_secs(30),
                || {
                    get(replica.port, "/metrics")
                        .filter(|(_, m)| m.contains("pgprism_backfill_rows_total"))
                },
                || replica.log(),
            );
            assert!(m.contains("pgprism_backfill_remaining_estimate"), "{m}");
            workload.take().expect("started").await.unwrap();
            eprintln!("{:?}: workload done", began.elapsed());
            let truth = "SELECT * FROM order_read_model_truth";
            let model = "SELECT * FROM order_read_model";
            eventually_or(
                "order_read_model equals the ground truth",
                Duration::from_secs(300),
                || (rows(&pg, &db, truth) == rows(&pg, &db, model)).then_some(()),
                || replica.log(),
            );
            let mut conn = redis::Client::open(redis.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let truth = pg
                .psql(
                    &db,
                    "SELECT id, status, item_count, total_cents FROM order_read_model_truth",
                )
                .unwrap();
            let scan = |pattern: &'static str| {
                let url = redis.url();
                async move {
                    let mut conn = redis::Client::open(url)
                        .unwrap()
                        .get_multiplexed_async_connection()
                        .await
                        .unwrap();
                    let mut keys = Vec::new();
                    let mut cursor = 0u64;
                    loop {
                        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(10_000)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        keys.extend(batch);
                        cursor = next;
                        if cursor == 0 {
                            return keys;
                        }
                    }
                }
            };
            eprintln!("{:?}: order_read_model equals the truth", began.elapsed());
            // The Redis targets load at their own pace: wait for their backfill to finish.
            let offset_key =
                pgprism_leader::redis_fence::offset_key("shop", "order_read_model.cache");
            let started = Instant::now();
            loop {
                let state: Option<String> = redis::cmd("HGET")
                    .arg(&offset_key)
                    .arg("backfill")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if state.as_deref().is_some_and(|s| s.contains("\"done\"")) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "the Redis target's backfill never finished: {state:?}\n{}",
                    replica.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            eprintln!("{:?}: Redis backfilled", began.elapsed());
            let keys = scan("order:*").await;
            assert_eq!(
                keys.len(),
                truth.lines().count(),
                "one Redis hash per order"
            );
            // Every hash against its truth row, a thousand per round trip.
            let lines: Vec<Vec<&str>> = truth.lines().map(|l| l.split('|').collect()).collect();
            for part in lines.chunks(1_000) {
                let mut pipe = redis::pipe();
                for f in part {
                    pipe.cmd("HMGET")
                        .arg(format!("order:{}", f[0]))
                        .arg("status")
                        .arg("item_count")
                        .arg("total_cents");
                }
                let got: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await.unwrap();
                for (f, g) in part.iter().zip(got) {
                    let want: Vec<Option<String>> =
                        f[1..].iter().map(|v| Some((*v).to_owned())).collect();
                    assert_eq!(g, want, "order:{}", f[0]);
                }
            }
            let customers = scan("customer:*").await;
            let want = pg.psql(&db, "SELECT count(*) FROM customers").unwrap();
            assert_eq!(
                customers.len().to_string(),
                want.trim(),
                "one JSON document per customer"
            );
            let status = pgprism()
                .args(["status", "-c"])
                .arg(&config)
                .env("PGPRISM_SOURCE_DSN", &dsn)
                .env("PGPRISM_SINKS_PG_DSN", &dsn)
                .env("PGPRISM_SINKS_CACHE_URL", redis.url())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&status.stdout);
            assert!(
                text.contains("done: "),
                "status shows the backfill done:\n{text}"
            );
            break;
        }
        // Kill -9 once another tenth of the orders is committed.
        let target = last + orders as u64 / 10;
        eventually_or(
            "the backfill commits more chunks",
            Duration::from_secs(120),
            || (committed().0 >= target).then_some(()),
            || replica.log(),
        );
        let mut replica = replica;
        replica.child.signal(Signal::Kill).unwrap();
        replica
            .child
            .wait_timeout(Duration::from_secs(10))
            .expect("killed");
        last = committed().0;
        assert!(
            last < orders as u64,
            "killed mid-backfill ({last} of {orders} rows)"
        );
    }
    assert_eq!(resumed.len(), 3, "three lives resumed a backfill");
    assert!(
        resumed.windows(2).all(|w| w[0] < w[1]),
        "each resumed further: {resumed:?}"
    );
    assert_eq!(
        rows(&pg, &db, "SELECT count(*) FROM pgprism.dead_letters"),
        vec!["0".to_owned()]
    );
}

/// `pgprism rebuild` against a running leader: the command takes a new epoch, the leader
/// steps down and the next life builds the shadow, swaps it in and carries on; the command
/// follows the progress to the swap, and the read model equals the ground truth after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_command_swaps_a_rebuilt_read_model_in_under_a_running_leader() {
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &db,
        &format!(
            "{SCHEMA}\n{READ_MODELS}\n{}",
            pgprism_testkit::shop::seed_sql(3_000)
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    std::fs::write(
        &config,
        EXAMPLE.replace("chunk_size = 10000", "chunk_size = 500"),
    )
    .unwrap();
    let a = start_replica("a", &config, &dsn, &redis.url(), dir.path());
    let truth = "SELECT * FROM order_read_model_truth";
    let model = "SELECT * FROM order_read_model";
    eventually_or(
        "the initial backfill loads the read model",
        Duration::from_secs(120),
        || (rows(&pg, &db, truth) == rows(&pg, &db, model)).then_some(()),
        || a.log(),
    );
    // Drift, then rebuild while the application writes.
    pg.psql(&db, "UPDATE order_read_model SET status = 'drifted'")
        .unwrap();
    let client = pg.client(&db).await.unwrap();
    let workload = tokio::spawn(async move {
        pgprism_testkit::shop::workload_on_existing(&client, 400, 8).await;
    });
    let out = tokio::task::spawn_blocking({
        let (config, dsn, url) = (config.clone(), dsn.clone(), redis.url());
        move || {
            pgprism()
                .args(["rebuild", "--projection", "order_read_model", "-c"])
                .arg(&config)
                .env("PGPRISM_SOURCE_DSN", &dsn)
                .env("PGPRISM_SINKS_PG_DSN", &dsn)
                .env("PGPRISM_SINKS_CACHE_URL", url)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rebuild failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log()
    );
    assert!(
        stdout.contains("order_read_model.pg: swapped in")
            && stdout.contains("rebuild of order_read_model done"),
        "{stdout}"
    );
    workload.await.unwrap();
    eventually_or(
        "the rebuilt read model equals the ground truth",
        Duration::from_secs(60),
        || (rows(&pg, &db, truth) == rows(&pg, &db, model)).then_some(()),
        || a.log(),
    );
    // An unknown projection is refused before anything changes.
    let bad = pgprism()
        .args(["rebuild", "--projection", "nope", "--no-wait", "-c"])
        .arg(&config)
        .env("PGPRISM_SOURCE_DSN", &dsn)
        .env("PGPRISM_SINKS_PG_DSN", &dsn)
        .env("PGPRISM_SINKS_CACHE_URL", redis.url())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success()
            && err.contains(
                "no projection named \"nope\" (projections: order_read_model, customers)"
            ),
        "{err}"
    );
}

/// kill -9 of the leading `pgprism run` process, three times, under a steady workload,
/// with a standby waiting each time: the standby takes the lock the death released (not
/// after waiting out the heartbeat, the path of a frozen leader), a change committed after
/// the kill becomes visible in order_read_model, the killed replica comes back as the next
/// standby, and the read models end equal to the ground truth. The times from the SIGKILL
/// to `/readyz` saying "leader" and to the change being visible are printed; their
/// distribution, idle and loaded, is benches/takeover.rs's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leading_process_frees_the_lock_for_the_standby_and_loses_nothing() {
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(&db, &format!("{SCHEMA}\n{READ_MODELS}")).unwrap();
    pg.psql(
        &db,
        "INSERT INTO customers (id, name, email)
         VALUES ('00000000-0000-0000-0000-0000000000aa', 'marker', 'm@example.com');
         INSERT INTO orders (id, customer_id)
         VALUES ('00000000-0000-0000-0000-0000000000aa', '00000000-0000-0000-0000-0000000000aa');",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    std::fs::write(&config, EXAMPLE).unwrap();
    let mut leader = start_replica("r0", &config, &dsn, &redis.url(), dir.path());
    leader.wait_for("leader", Duration::from_secs(30));
    let mut standby = start_replica("r1", &config, &dsn, &redis.url(), dir.path());
    standby.wait_for("standby", Duration::from_secs(30));
    let writer = pg.client(&db).await.unwrap();
    let workload = tokio::spawn(async move {
        pgprism_testkit::shop::workload(&writer, 1_500, 41).await;
    });
    let marker = |pg: &PgServer, db: &str| {
        rows(
            pg,
            db,
            "SELECT customer_name FROM order_read_model WHERE id = '00000000-0000-0000-0000-0000000000aa'",
        )
    };
    let (mut to_ready, mut to_visible) = (Vec::new(), Vec::new());
    for kill in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        leader.child.signal(Signal::Kill).unwrap();
        let killed = Instant::now();
        // A change committed after the death: visible only once the standby leads.
        let name = format!("marker {kill}");
        pg.psql(
            &db,
            &format!("UPDATE customers SET name = '{name}' WHERE id = '00000000-0000-0000-0000-0000000000aa'"),
        )
        .unwrap();
        let (mut ready_at, mut visible_at) = (None, None);
        eventually_or(
            "the standby leads and the change after the kill is visible",
            Duration::from_secs(30),
            || {
                if ready_at.is_none() && standby.is("leader") {
                    ready_at = Some(killed.elapsed());
                }
                if visible_at.is_none() && marker(&pg, &db) == [name.clone()] {
                    visible_at = Some(killed.elapsed());
                }
                (ready_at.is_some() && visible_at.is_some()).then_some(())
            },
            || standby.log(),
        );
        let (ready, visible) = (ready_at.unwrap(), visible_at.unwrap());
        eprintln!(
            "kill -9 #{kill}: standby leading after {ready:?}, change visible after {visible:?}"
        );
        // The killed leader's session died with it: the standby took the lock its holder
        // released, with the dead leader's heartbeat younger than `takeover_after` (5 s),
        // the path of a leader that freezes instead. How long it took is
        // benches/takeover.rs's business.
        assert_eq!(
            standby.took_lock_via().as_deref(),
            Some("lock-released"),
            "kill -9 #{kill}\n{}",
            standby.log()
        );
        to_ready.push(ready);
        to_visible.push(visible);
        assert!(
            leader.child.wait_timeout(Duration::from_secs(5)).is_some(),
            "the killed replica is gone"
        );
        // The killed replica comes back, as the next standby.
        let next = start_replica(
            &format!("r{}", kill + 2),
            &config,
            &dsn,
            &redis.url(),
            dir.path(),
        );
        next.wait_for("standby", Duration::from_secs(30));
        leader = std::mem::replace(&mut standby, next);
    }
    workload.await.unwrap();
    let truth = "SELECT * FROM order_read_model_truth";
    eventually_or(
        "order_read_model equals the truth after three kill -9s",
        Duration::from_secs(60),
        || {
            (rows(&pg, &db, truth) == rows(&pg, &db, "SELECT * FROM order_read_model"))
                .then_some(())
        },
        || leader.log(),
    );
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis_orders_match_the_truth(&pg, &db, &mut conn).await;
    to_ready.sort();
    to_visible.sort();
    eprintln!(
        "kill -9 takeover of `pgprism run`, 3 trials: leading after {to_ready:?}, first change after the kill visible after {to_visible:?}"
    );
}
