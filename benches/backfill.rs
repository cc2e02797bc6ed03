//! Backfill: how fast pgprism loads the rows that existed before a target joined the
//! pipeline, against a stock way of loading the same rows measured in the same run on the
//! same Postgres server, and how fresh the other targets of the pipeline stay meanwhile.
//!
//! Setup (once): a source database with the example shop (sql/schema.sql) seeded with
//! `PGPRISM_BENCH_ORDERS` orders (default 200,000 × `PGPRISM_BENCH_SCALE`; 1.5 items per
//! order, `orders / 20` customers, `orders / 100` products, `ANALYZE`d) **before** the
//! publication and slot exist, so only a backfill can bring those rows; a sink database on
//! the same server (the walsender skips its WAL: it decodes the source database only)
//! with empty `orders_copy`, `orders_copy2` (`LIKE orders INCLUDING ALL`), `products_copy`
//! and `order_read_model` tables.
//!
//! Per round (paired, the order within each pair alternating by round; a `CHECKPOINT`
//! before every run; the slot advanced to the WAL head, untimed, before every pgprism run
//! so no baseline's WAL is decoded inside a timed run; the runs' `until` is a
//! non-transactional logical message, see `Dbs::marker`):
//!
//! 1. **Mirror.** Baseline: `COPY orders TO STDOUT` on a source session streamed into
//!    `COPY orders_copy2 FROM STDIN` on a sink session (tokio-postgres `copy_out` →
//!    `copy_in`), connecting both sessions included. pgprism: a new pipeline (new offsets,
//!    so the target backfills) with one mirror `public.orders` → sink `orders_copy`,
//!    timed from `Projector::start` until `drive` returns (every target caught up to a
//!    marker LSN taken just before and no target backfilling). Ratio = baseline time ÷
//!    pgprism time (1.0: as fast as `COPY`; target ≥ 0.8). Also printed: the gaps
//!    between the run's flushes (with nothing streamed, a mirror's next chunk waits
//!    for the lane to close the previous chunk's window, see `backfill`; compare with
//!    `drive::IDLE_TICK`).
//! 2. **Query projection.** Baseline: on the source, `INSERT INTO order_read_model_copy
//!    SELECT * FROM order_read_model_truth` into an empty table (one statement, connecting
//!    included). pgprism: a new pipeline with the `order_read_model` projection of the
//!    sink tests (Postgres target `order_read_model` in the sink database only; its query
//!    runs on the source), timed the same way. Ratio as above (target ≥ 0.8).
//! 3. **Live lag during a backfill.** A pipeline with the mirror `public.products` →
//!    `products_copy` is started and caught up first (its own small backfill, untimed).
//!    Then, with a writer updating random products at `PGPRISM_BENCH_WRITE_RATE` tx/s
//!    (default 200; each update sets `price_cents` to the next value of a counter) and an
//!    independent poller reading `max(price_cents)` of `products_copy` in the sink every
//!    5 ms (flushes apply the stream in order, so a value seen means every earlier one is
//!    visible), commit → visible latencies are measured:
//!    - *no backfill*: the same pipeline restarted with the products mirror alone, for
//!      `PGPRISM_BENCH_QUIET_SECS` seconds (default 3);
//!    - *during a backfill*: the pipeline restarted with the mirror `public.orders` →
//!      `orders_copy` added (a new target: it backfills while products stays live),
//!      until the orders target's backfill state in `pgprism.offsets` reads `done`
//!      (polled every 10 ms). Only updates committed before that count. The flush
//!      durations of that run and its backfill time are reported too.
//!
//! After every run the loaded table must equal its source (count and a checksum over the
//! rows' text form), or the bench fails.
//!
//! `PGPRISM_BENCH_CHUNK` sets `backfill.chunk_size` (default 10,000),
//! `PGPRISM_BENCH_ROUNDS` the rounds (default 3). `RUST_LOG=info` shows pgprism's logs
//! (backfill progress).
//!
//! Run: `cargo bench -p pgprism-sink --bench backfill`

mod common;

use pgprism_testkit::shop::order_read_model_projection;

use std::collections::{BTreeMap, VecDeque};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, TryStreamExt};
use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{ReplicationStream, StreamConfig};
use pgprism_leader::Epoch;
use pgprism_pg::Dsn;
use pgprism_sink::drive::{DriveOptions, drive};
use pgprism_sink::spec::{BackfillSpec, BatchSpec, ProjectionSpec, SinkSpec};
use pgprism_sink::{FlushReport, Projector, ProjectorConfig};
use pgprism_testkit::PgServer;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

const SCHEMA: &str = include_str!("../sql/schema.sql");
const READ_MODELS: &str = include_str!("../sql/read_models.sql");

/// Orders at scale 1.0.
const ORDERS: usize = 200_000;
/// The slot and the publication.
const SLOT: &str = "pgprism";
/// The sink's name in the configuration.
const SINK: &str = "sink";
/// How often the lag poller reads the sink.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// How often the backfill state is polled (live-lag run).
const STATE_EVERY: Duration = Duration::from_millis(10);
/// Longest a pgprism run may take.
const RUN_LIMIT: Duration = Duration::from_secs(1800);
/// The first value the writer sets (above every seeded price).
const FIRST_PRICE: i32 = 10_000_000;

/// Equal on two tables iff their rows are (with overwhelming probability).
const CHECKSUM: &str =
    "SELECT count(*) || ' ' || coalesce(sum(hashtext(t::text)::bigint), 0) FROM {table} t";

const ORDERS_MIRROR: &str = r#"
name = "orders"
kind = "mirror"
source = "public.orders"
[[targets]]
sink = "sink"
table = "public.orders_copy"
"#;

/// The target name of [`ORDERS_MIRROR`] (`projection.sink`), as in `pgprism.offsets`.
const ORDERS_TARGET: &str = "orders.sink";

const PRODUCTS_MIRROR: &str = r#"
name = "products"
kind = "mirror"
source = "public.products"
[[targets]]
sink = "sink"
table = "public.products_copy"
"#;

/// The order read model of the sink tests, Postgres target (in the sink database) only.
fn order_read_model_toml() -> String {
    order_read_model_projection(
        r#"[[targets]]
sink = "sink"
table = "public.order_read_model"
"#,
    )
}

fn projection(text: &str) -> ProjectionSpec {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Everything a run needs to know about the two databases.
struct Dbs<'a> {
    pg: &'a PgServer,
    src_db: String,
    src_dsn: String,
    sink_db: String,
    sink_dsn: String,
    chunk: usize,
}

impl Dbs<'_> {
    fn src(&self, sql: &str) -> String {
        self.pg
            .psql(&self.src_db, sql)
            .unwrap_or_else(|e| panic!("source: {e}\nSQL: {sql}"))
    }

    fn sink(&self, sql: &str) -> String {
        self.pg
            .psql(&self.sink_db, sql)
            .unwrap_or_else(|e| panic!("sink: {e}\nSQL: {sql}"))
    }

    fn config(&self, pipeline: &str, epoch: i64, projections: &[&str]) -> ProjectorConfig {
        ProjectorConfig {
            pipeline: pipeline.to_owned(),
            lock_key: pgprism_leader::lock_key(pipeline),
            epoch: Epoch(epoch),
            source: Dsn::parse(&self.src_dsn).unwrap(),
            sinks: BTreeMap::from([(
                SINK.to_owned(),
                SinkSpec::postgres(pgprism_pg::Dsn::parse(&self.sink_dsn).unwrap()),
            )]),
            projections: projections.iter().map(|p| projection(p)).collect(),
            batch: BatchSpec::default(),
            takeover_after: Duration::from_secs(5),
            backfill: BackfillSpec {
                initial: true,
                chunk_size: self.chunk,
                rows_per_second: 0,
            },
        }
    }

    /// The `until` of a run: the WAL position now, as a *non-transactional* logical
    /// message. A transactional marker would arrive as a transaction at `until`, and
    /// `drive` returns as soon as one does (`inbox.past_until`), backfill or not; with
    /// no transaction at or past `until`, `drive` returns only once the stream's head
    /// passed it, everything is durable and no target backfills.
    fn marker(&self) -> Lsn {
        self.src("SELECT pg_logical_emit_message(false, 'pgprism-bench', 'mark')")
            .trim()
            .parse()
            .unwrap()
    }

    /// Move the slot to the WAL head (untimed), so the next run decodes none of what the
    /// previous runs wrote. Retries while the last walsender is still exiting.
    fn advance_slot(&self) {
        let sql = format!("SELECT pg_replication_slot_advance('{SLOT}', pg_current_wal_lsn())");
        for _ in 0..200 {
            match self.pg.psql(&self.src_db, &sql) {
                Ok(_) => return,
                Err(e) if e.to_string().contains("active") => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("advancing the slot: {e}"),
            }
        }
        panic!("the slot stayed active for 10 s after its stream closed");
    }

    /// `CHECKSUM` of `table` in the source (or sink) database.
    fn checksum(&self, sink: bool, table: &str) -> String {
        let sql = CHECKSUM.replace("{table}", table);
        if sink {
            self.sink(&sql)
        } else {
            self.src(&sql)
        }
        .trim()
        .to_owned()
    }

    async fn stream(&self, start: Lsn) -> ReplicationStream {
        let mut cfg = StreamConfig::new(Dsn::parse(&self.src_dsn).unwrap(), SLOT, SLOT);
        cfg.start_lsn = start;
        ReplicationStream::open(cfg).await.expect("open the stream")
    }
}

/// A pgprism run: time, flushes (when each ended, how long it took).
struct Run {
    took: Duration,
    flushes: Vec<(Instant, Duration)>,
    written: u64,
}

impl Run {
    /// Idle time between consecutive flushes (one's end to the next one's start).
    fn idle(&self) -> Vec<Duration> {
        self.flushes
            .windows(2)
            .map(|w| (w[1].0 - w[1].1).saturating_duration_since(w[0].0))
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "{} flushes, {} rows written; flush took {}; idle between flushes {}",
            self.flushes.len(),
            self.written,
            spread(&self.flushes.iter().map(|f| f.1).collect::<Vec<_>>()),
            spread(&self.idle())
        )
    }
}

/// Start a projector and drive it until everything before `until` is durable and no target
/// backfills; timed from `Projector::start` until `drive` returns.
async fn run_until(dbs: &Dbs<'_>, cfg: &ProjectorConfig, until: Lsn) -> Run {
    let t = Instant::now();
    let mut projector = Projector::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("pipeline {}: Projector::start failed: {e}", cfg.pipeline));
    let mut stream = dbs.stream(projector.resume_lsn()).await;
    let (_stop_tx, mut stop) = watch::channel(false);
    let opts = DriveOptions {
        replay_window: 0,
        until: Some(until),
    };
    let mut flushes = Vec::new();
    let mut written = 0;
    tokio::time::timeout(
        RUN_LIMIT,
        drive(
            &mut projector,
            &mut stream,
            &mut stop,
            &opts,
            |r: &FlushReport| {
                flushes.push((Instant::now(), r.took));
                written += r.written;
            },
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("pipeline {}: not done within {RUN_LIMIT:?}", cfg.pipeline))
    .unwrap_or_else(|e| panic!("pipeline {}: drive failed: {e} ({e:?})", cfg.pipeline));
    let took = t.elapsed();
    assert!(
        !projector.backfilling(),
        "pipeline {}: drive returned while a target still backfills",
        cfg.pipeline
    );
    stream.shutdown(Duration::from_secs(5)).await.ok();
    Run {
        took,
        flushes,
        written,
    }
}

/// Baseline 1: `COPY orders TO STDOUT` (source) → `COPY orders_copy2 FROM STDIN` (sink).
async fn copy_orders(dbs: &Dbs<'_>) -> (Duration, u64) {
    let t = Instant::now();
    let src = dbs.pg.client(&dbs.src_db).await.expect("source client");
    let sink = dbs.pg.client(&dbs.sink_db).await.expect("sink client");
    let out = src
        .copy_out("COPY orders TO STDOUT")
        .await
        .expect("COPY TO");
    let mut out = pin!(out);
    let into = sink
        .copy_in("COPY orders_copy2 FROM STDIN")
        .await
        .expect("COPY FROM");
    let mut into = pin!(into);
    while let Some(data) = out.try_next().await.expect("COPY TO data") {
        into.send(data).await.expect("COPY FROM data");
    }
    let rows = into.as_mut().finish().await.expect("COPY FROM finishes");
    (t.elapsed(), rows)
}

/// Baseline 2: the ground-truth query into an empty table, one statement, on the source.
async fn insert_select(dbs: &Dbs<'_>) -> (Duration, u64) {
    let t = Instant::now();
    let src = dbs.pg.client(&dbs.src_db).await.expect("source client");
    let rows = src
        .execute(
            "INSERT INTO order_read_model_copy SELECT * FROM order_read_model_truth",
            &[],
        )
        .await
        .expect("INSERT … SELECT");
    (t.elapsed(), rows)
}

/// The writer's updates not yet seen in the sink, and the end of writing.
#[derive(Default)]
struct Probe {
    /// (value written, when its commit returned), in commit order.
    pending: Mutex<VecDeque<(i32, Instant)>>,
    stop: AtomicBool,
    done: AtomicBool,
}

/// Update a random product at `rate` per second (one statement, autocommit) until told to
/// stop; each sets `price_cents` to the next counter value. Returns the updates made.
async fn writer(
    client: tokio_postgres::Client,
    ids: Arc<Vec<String>>,
    rate: f64,
    next: Arc<AtomicI32>,
    probe: Arc<Probe>,
    seed: u64,
) -> u64 {
    let stmt = client
        .prepare("UPDATE products SET price_cents = $1 WHERE id = $2::text::uuid")
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0;
    while !probe.stop.load(Ordering::Acquire) {
        tick.tick().await;
        let v = next.fetch_add(1, Ordering::Relaxed);
        let id = &ids[rng.random_range(0..ids.len())];
        let updated = client.execute(&stmt, &[&v, id]).await.expect("update");
        assert_eq!(updated, 1);
        probe.pending.lock().unwrap().push_back((v, Instant::now()));
        n += 1;
    }
    probe.done.store(true, Ordering::Release);
    n
}

/// Read `max(price_cents)` of `products_copy` every [`POLL_EVERY`]; every pending update at
/// or below it is visible. Ends once the writer is done and every update was seen.
/// Returns (commit time, commit → visible) per update.
async fn poller(client: tokio_postgres::Client, probe: Arc<Probe>) -> Vec<(Instant, Duration)> {
    let stmt = client
        .prepare("SELECT coalesce(max(price_cents), 0) FROM products_copy")
        .await
        .unwrap();
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut samples = Vec::new();
    loop {
        tick.tick().await;
        let seen: i32 = client.query_one(&stmt, &[]).await.unwrap().get(0);
        let now = Instant::now();
        let mut pending = probe.pending.lock().unwrap();
        let done = probe.done.load(Ordering::Acquire);
        while let Some(&(v, at)) = pending.front() {
            if v > seen {
                break;
            }
            samples.push((at, now.saturating_duration_since(at)));
            pending.pop_front();
        }
        if done && pending.is_empty() {
            return samples;
        }
    }
}

/// When a live run stops.
enum Until {
    /// After this long.
    Quiet(Duration),
    /// When the target's backfill state in the sink's offsets reads `done`.
    BackfillDone(&'static str),
}

/// A live run's numbers.
struct Live {
    /// Start → stop condition (for `BackfillDone`: the backfill's time).
    took: Duration,
    /// Commit → visible of the updates committed before the stop condition.
    lags: Vec<Duration>,
    /// Updates per second the writer achieved.
    write_rate: f64,
    /// Flush durations of the flushes that ended before the stop condition.
    flushes: Vec<Duration>,
}

/// Start `cfg`'s projector, then drive it while the writer updates products and the
/// poller watches `products_copy`, until `until`; then stop the writer, let the poller see
/// every update, and stop driving.
async fn run_live(
    dbs: &Dbs<'_>,
    cfg: &ProjectorConfig,
    until: Until,
    rate: f64,
    ids: Arc<Vec<String>>,
    next: Arc<AtomicI32>,
    seed: u64,
) -> Live {
    let t = Instant::now();
    let mut projector = Projector::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("pipeline {}: Projector::start failed: {e}", cfg.pipeline));
    let mut stream = dbs.stream(projector.resume_lsn()).await;
    let probe = Arc::new(Probe::default());
    let writes_from = Instant::now();
    let writing = tokio::spawn(writer(
        dbs.pg.client(&dbs.src_db).await.unwrap(),
        ids,
        rate,
        next,
        probe.clone(),
        seed,
    ));
    let polling = tokio::spawn(poller(
        dbs.pg.client(&dbs.sink_db).await.unwrap(),
        probe.clone(),
    ));
    let state = dbs.pg.client(&dbs.sink_db).await.unwrap();
    let (stop_tx, mut stop) = watch::channel(false);
    let opts = DriveOptions {
        replay_window: 0,
        until: None,
    };
    let pipeline = cfg.pipeline.clone();
    let control = async {
        match until {
            Until::Quiet(d) => tokio::time::sleep(d).await,
            Until::BackfillDone(target) => loop {
                let s: Option<String> = state
                    .query_opt(
                        "SELECT backfill::json->>'state' FROM pgprism.offsets
                          WHERE pipeline = $1 AND sink = $2",
                        &[&pipeline, &target],
                    )
                    .await
                    .unwrap()
                    .and_then(|r| r.get(0));
                if s.as_deref() == Some("done") {
                    break;
                }
                tokio::time::sleep(STATE_EVERY).await;
            },
        }
        let stopped = Instant::now();
        probe.stop.store(true, Ordering::Release);
        let writes = writing.await.expect("writer");
        let write_rate = writes as f64 / writes_from.elapsed().as_secs_f64();
        let samples = tokio::time::timeout(Duration::from_secs(120), polling)
            .await
            .expect("every product update visible in products_copy within 120 s")
            .expect("poller");
        stop_tx.send(true).unwrap();
        (stopped, write_rate, samples)
    };
    let mut flushes = Vec::new();
    let driving = async {
        drive(&mut projector, &mut stream, &mut stop, &opts, |r| {
            flushes.push((Instant::now(), r.took))
        })
        .await
        .unwrap_or_else(|e| panic!("pipeline {pipeline}: drive failed: {e} ({e:?})"))
    };
    let ((), (stopped, write_rate, samples)) =
        tokio::time::timeout(RUN_LIMIT, async { tokio::join!(driving, control) })
            .await
            .unwrap_or_else(|_| panic!("pipeline {}: not done within {RUN_LIMIT:?}", cfg.pipeline));
    stream.shutdown(Duration::from_secs(5)).await.ok();
    Live {
        took: stopped - t,
        lags: samples
            .into_iter()
            .filter(|(at, _)| *at <= stopped)
            .map(|(_, d)| d)
            .collect(),
        write_rate,
        flushes: flushes
            .into_iter()
            .filter(|(at, _)| *at <= stopped)
            .map(|(_, d)| d)
            .collect(),
    }
}

/// The `p`-quantile (nearest rank) of sorted `v`.
fn quantile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// "p50 / p99 / max" of `v`.
fn spread(v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort();
    format!(
        "p50 {:.1?} / p99 {:.1?} / max {:.1?} (n={})",
        quantile(&v, 0.5),
        quantile(&v, 0.99),
        v.last().copied().unwrap_or_default(),
        v.len()
    )
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn median_d(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn verdict(ratio: f64) -> &'static str {
    if ratio >= 0.8 {
        "meets the ≥ 0.8× target"
    } else {
        "BELOW the ≥ 0.8× target"
    }
}

fn main() {
    let Some(common::Bench {
        scale,
        rounds,
        pg,
        rt,
    }) = common::start()
    else {
        return;
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let orders = common::env_number("PGPRISM_BENCH_ORDERS")
        .map_or((ORDERS as f64 * scale) as usize, |n| n as usize)
        .max(100);
    let chunk = common::env_number("PGPRISM_BENCH_CHUNK").map_or(10_000, |n| n as usize);
    let rate = common::env_number("PGPRISM_BENCH_WRITE_RATE").unwrap_or(200.0);
    let quiet =
        Duration::from_secs_f64(common::env_number("PGPRISM_BENCH_QUIET_SECS").unwrap_or(3.0));

    // The source: the shop, seeded before the slot exists.
    let (src_db, src_dsn) = pg.fresh_database().unwrap();
    let t = Instant::now();
    pg.psql(
        &src_db,
        &format!(
            "{SCHEMA}\n{READ_MODELS}\n{}\n
             CREATE TABLE order_read_model_copy (LIKE order_read_model INCLUDING ALL);",
            pgprism_testkit::shop::seed_sql(orders)
        ),
    )
    .unwrap();
    pg.psql(
        &src_db,
        &format!(
            "VACUUM ANALYZE;
             CREATE PUBLICATION {SLOT} FOR TABLE customers, products, orders, order_items;
             SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput');"
        ),
    )
    .unwrap();
    let seeded = t.elapsed();
    // The sink: the same schema, empty, plus the copies.
    let (sink_db, sink_dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &sink_db,
        &format!(
            "{SCHEMA}\n{READ_MODELS}
             CREATE TABLE orders_copy (LIKE orders INCLUDING ALL);
             CREATE TABLE orders_copy2 (LIKE orders INCLUDING ALL);
             CREATE TABLE products_copy (LIKE products INCLUDING ALL);"
        ),
    )
    .unwrap();
    let dbs = Dbs {
        pg: &pg,
        src_db,
        src_dsn,
        sink_db,
        sink_dsn,
        chunk,
    };
    let count = |sql: &str| -> u64 { dbs.src(sql).trim().parse().unwrap() };
    let rows = count("SELECT count(*) FROM orders");
    let items = count("SELECT count(*) FROM order_items");
    let products = count("SELECT count(*) FROM products");
    let orders_sum = dbs.checksum(false, "orders");
    let truth_sum = dbs.checksum(false, "order_read_model_truth");
    let ids: Arc<Vec<String>> = Arc::new(
        dbs.src("SELECT id FROM products ORDER BY id")
            .lines()
            .map(str::to_owned)
            .collect(),
    );
    println!(
        "backfill — {rows} orders ({items} items, {products} products), chunk {chunk} rows, \
         {rounds} rounds, scale {scale}, writer {rate} tx/s, Postgres {} (seeded in {seeded:.1?})",
        pg.psql("postgres", "SHOW server_version").unwrap().trim()
    );

    let next_price = Arc::new(AtomicI32::new(FIRST_PRICE));
    let mut mirror_ratio = Vec::new();
    let mut query_ratio = Vec::new();
    let mut mirror_idle = Vec::new();
    let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut quiet_lags = Vec::new();
    let mut backfill_lags = Vec::new();
    let mut backfill_flushes = Vec::new();
    let mut record = |label: &'static str, took: Duration| {
        println!(
            "  {label:<44} {took:>9.2?}  {:>8.0} rows/s",
            rows as f64 / took.as_secs_f64()
        );
        times.entry(label).or_default().push(took);
    };
    const COPY: &str = "COPY TO | COPY FROM (baseline)";
    const MIRROR: &str = "pgprism mirror backfill";
    const INSERT: &str = "INSERT … SELECT truth view (baseline)";
    const QUERY: &str = "pgprism order_read_model backfill";
    const LIVE: &str = "pgprism mirror backfill + live products";

    // `PGPRISM_BENCH_ONLY=live`: only the live-lag part.
    let live_only = std::env::var("PGPRISM_BENCH_ONLY").is_ok_and(|v| v == "live");
    for r in 0..rounds {
        println!("round {r}:");
        // 1. Mirror vs COPY.
        let (mut base, mut ours) = (Duration::ZERO, Duration::ZERO);
        for k in (0..2).filter(|_| !live_only) {
            dbs.sink("TRUNCATE orders_copy, orders_copy2");
            if (k + r) % 2 == 0 {
                dbs.sink("CHECKPOINT");
                let (took, copied) = rt.block_on(copy_orders(&dbs));
                assert_eq!(copied, rows, "COPY loaded every order");
                assert_eq!(
                    dbs.checksum(true, "orders_copy2"),
                    orders_sum,
                    "COPY: orders_copy2 ≠ orders"
                );
                record(COPY, took);
                base = took;
            } else {
                dbs.advance_slot();
                let until = dbs.marker();
                dbs.sink("CHECKPOINT");
                let cfg = dbs.config(&format!("mirror_{r}"), 1, &[ORDERS_MIRROR]);
                let run = rt.block_on(run_until(&dbs, &cfg, until));
                assert_eq!(
                    dbs.checksum(true, "orders_copy"),
                    orders_sum,
                    "pgprism mirror: orders_copy ≠ orders (count, checksum)"
                );
                record(MIRROR, run.took);
                println!("    {}", run.describe());
                mirror_idle.extend(run.idle());
                ours = run.took;
            }
        }
        let ratio = base.as_secs_f64() / ours.as_secs_f64();
        if !live_only {
            println!("  mirror ratio (COPY time / pgprism time): {ratio:.2}×");
            mirror_ratio.push(ratio);
        }

        // 2. Query projection vs INSERT … SELECT.
        for k in (0..2).filter(|_| !live_only) {
            if (k + r) % 2 == 0 {
                dbs.src("TRUNCATE order_read_model_copy");
                dbs.src("CHECKPOINT");
                let (took, inserted) = rt.block_on(insert_select(&dbs));
                assert_eq!(inserted, rows, "INSERT … SELECT wrote every order");
                assert_eq!(
                    dbs.checksum(false, "order_read_model_copy"),
                    truth_sum,
                    "baseline: order_read_model_copy ≠ order_read_model_truth"
                );
                record(INSERT, took);
                base = took;
            } else {
                dbs.sink("TRUNCATE order_read_model");
                dbs.advance_slot();
                let until = dbs.marker();
                dbs.sink("CHECKPOINT");
                let cfg = dbs.config(
                    &format!("query_{r}"),
                    1,
                    &[order_read_model_toml().as_str()],
                );
                let run = rt.block_on(run_until(&dbs, &cfg, until));
                assert_eq!(
                    dbs.checksum(true, "order_read_model"),
                    truth_sum,
                    "pgprism: order_read_model ≠ order_read_model_truth (count, checksum)"
                );
                record(QUERY, run.took);
                println!("    {}", run.describe());
                ours = run.took;
            }
        }
        let ratio = base.as_secs_f64() / ours.as_secs_f64();
        if !live_only {
            println!("  query ratio (INSERT … SELECT time / pgprism time): {ratio:.2}×");
            query_ratio.push(ratio);
        }

        // 3. Live lag of products: without, then during, the orders backfill.
        let pipeline = format!("live_{r}");
        dbs.sink("TRUNCATE orders_copy, products_copy");
        dbs.advance_slot();
        let until = dbs.marker();
        rt.block_on(run_until(
            &dbs,
            &dbs.config(&pipeline, 1, &[PRODUCTS_MIRROR]),
            until,
        ));
        dbs.sink("CHECKPOINT");
        let quiet_run = rt.block_on(run_live(
            &dbs,
            &dbs.config(&pipeline, 2, &[PRODUCTS_MIRROR]),
            Until::Quiet(quiet),
            rate,
            ids.clone(),
            next_price.clone(),
            1_000 + r as u64,
        ));
        println!(
            "  products commit → visible, no backfill ({:.1?}, {:.0} tx/s): {}",
            quiet_run.took,
            quiet_run.write_rate,
            spread(&quiet_run.lags)
        );
        dbs.sink("CHECKPOINT");
        let live = rt.block_on(run_live(
            &dbs,
            &dbs.config(&pipeline, 3, &[PRODUCTS_MIRROR, ORDERS_MIRROR]),
            Until::BackfillDone(ORDERS_TARGET),
            rate,
            ids.clone(),
            next_price.clone(),
            2_000 + r as u64,
        ));
        assert_eq!(
            dbs.checksum(true, "orders_copy"),
            orders_sum,
            "live run: orders_copy ≠ orders (count, checksum)"
        );
        if dbs.checksum(true, "products_copy") != dbs.checksum(false, "products") {
            let q = "SELECT id, name, price_cents FROM {t} ORDER BY id";
            let copy: Vec<String> = dbs
                .sink(&q.replace("{t}", "products_copy"))
                .lines()
                .map(str::to_owned)
                .collect();
            let src: Vec<String> = dbs
                .src(&q.replace("{t}", "products"))
                .lines()
                .map(str::to_owned)
                .collect();
            for (c, s) in copy.iter().zip(&src).filter(|(c, s)| c != s).take(20) {
                eprintln!("copy {c}\nsrc  {s}");
            }
            eprintln!("offsets: {}", dbs.sink("SELECT pipeline, sink, resume_lsn, changes_done, epoch, backfill FROM pgprism.offsets WHERE pipeline LIKE 'live%'"));
            panic!("live run: products_copy ≠ products");
        }
        record(LIVE, live.took);
        println!(
            "  products commit → visible, during the orders backfill ({:.0} tx/s): {}",
            live.write_rate,
            spread(&live.lags)
        );
        println!("    flush took {}", spread(&live.flushes));
        quiet_lags.extend(quiet_run.lags);
        backfill_lags.extend(live.lags);
        backfill_flushes.extend(live.flushes);
    }

    println!("\n| run | median time | rows/s | all rounds |");
    println!("|---|---|---|---|");
    for label in [COPY, MIRROR, INSERT, QUERY, LIVE] {
        let Some(v) = times.get(label) else { continue };
        let m = median_d(v);
        println!(
            "| {label} | {m:.2?} | {:.0} | {:?} |",
            rows as f64 / m.as_secs_f64(),
            v.iter().map(|d| format!("{d:.2?}")).collect::<Vec<_>>()
        );
    }
    let fmt = |v: &[f64]| v.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>();
    let m = median_f(&mirror_ratio);
    println!(
        "\nmirror backfill ÷ COPY (baseline time / pgprism time, per round {:?}): median {m:.2}× — {}",
        fmt(&mirror_ratio),
        verdict(m)
    );
    println!(
        "  mirror runs, idle between flushes (all rounds): {} — drive::IDLE_TICK is {:?}",
        spread(&mirror_idle),
        pgprism_sink::drive::IDLE_TICK
    );
    let m = median_f(&query_ratio);
    println!(
        "order_read_model backfill ÷ INSERT … SELECT (per round {:?}): median {m:.2}× — {}",
        fmt(&query_ratio),
        verdict(m)
    );
    println!(
        "products live lag (commit → visible in products_copy, all rounds): \
         no backfill {}; during the orders backfill {}",
        spread(&quiet_lags),
        spread(&backfill_lags)
    );
    println!(
        "flush durations during the orders backfill (all rounds): {}",
        spread(&backfill_flushes)
    );
}
