//! Chaos: `pgprism run` itself, killed with SIGKILL at random moments and aborted at its
//! crash points (the `failpoints` feature, armed by `FAILPOINTS`) while the application
//! writes, and started again each time. Afterwards every read model — a query projection
//! and a mirror, each in Postgres and in Redis — equals the source row for row: nothing
//! lost, nothing stale, no dead letter. All along, no target's offset goes back, and no
//! read-model row goes back in time or comes back after its deletion.
//!
//! How we know the kills land where it hurts (printed at the end, and the first two
//! asserted): the Postgres log names each sink transaction a kill cut off ("unexpected EOF
//! on client connection with an open transaction"); a Redis target whose guards are ahead
//! of its offset right after a death was killed between its batch and its offset write;
//! and the `flushed` lines give the share of a life spent flushing.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    CUT_OFF, Env, Log, PATIENCE, eventually, pgprism, seeded_rng, sessions_gone, start_run,
};
use pgprism_decoder::Lsn;
use pgprism_leader::{Offset, PgFence, RedisFence};
use pgprism_testkit::shop::{MODEL, ORDER_COLUMNS, TRUTH, assert_same};
use pgprism_testkit::{ChildGuard, Signal};
use rand::Rng;
use redis::aio::MultiplexedConnection;
use tokio_postgres::Client;

const PIPELINE: &str = "chaos";
/// Deaths before the final, clean life: two of three by kill -9, one by a failpoint.
const LIVES: usize = 33;
/// How often offsets and read models are sampled while a projector lives.
const SAMPLE_EVERY: Duration = Duration::from_millis(30);
/// The application waits while the slot is this far behind: on a slow machine the
/// projector, restarted over and over, must still catch up within `PATIENCE` at the end.
const MAX_BACKLOG: i64 = 1 << 20;

/// Every target, as `(name, sink kind)`; names are `projection.sink`.
const TARGETS: [(&str, Kind); 4] = [
    ("order_read_model.pg", Kind::Postgres),
    ("order_read_model.cache", Kind::Redis),
    ("products.pg", Kind::Postgres),
    ("products.cache", Kind::Redis),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    Redis,
}

/// The mirror's target table, next to the example schema.
const MIRROR_DDL: &str = "
CREATE SCHEMA read;
CREATE TABLE read.products (id uuid PRIMARY KEY, name text, price_cents int);";

const MIRROR: &str = r#"
name = "products"
kind = "mirror"
source = "public.products"
[[targets]]
sink = "pg"
table = "read.products"
[[targets]]
sink = "cache"
key = "product:{id}"
format = "hash"
"#;

const PRODUCT_COLUMNS: [&str; 3] = ["id", "name", "price_cents"];

/// The ground truth as text, in the form the pipeline writes (session TimeZone UTC).
const PRODUCTS: &str = "SELECT id::text, name, price_cents::text FROM public.products";
const MIRRORED: &str = "SELECT id::text, name, price_cents::text FROM read.products";

/// One `pgprism run` process, SIGKILLed when dropped.
struct Life {
    n: usize,
    child: ChildGuard,
}

/// The log's name of life `n`.
fn who(n: usize) -> String {
    format!("life {n}")
}

impl Life {
    fn start(config: &Path, failpoints: Option<&str>, n: usize, log: &Log) -> Life {
        Life {
            n,
            child: start_run(config, &who(n), failpoints, log),
        }
    }

    /// When it first printed a line containing `text`.
    async fn printed(&self, text: &str, log: &Log) -> Instant {
        let what = || format!("life {} never printed {text:?}", self.n);
        eventually(log, Duration::from_millis(5), what, async || {
            log.of(&who(self.n))
                .into_iter()
                .find(|l| l.text.contains(text))
                .map(|l| l.at)
        })
        .await
    }

    /// Sample `watch` (`fast`: see [`Watch::until`]) until the process ends by itself.
    async fn exit(&mut self, watch: &mut Watch, when: &str, fast: bool) -> ExitStatus {
        let mut status = None;
        watch
            .until(when, fast, || {
                status = self.child.try_wait().unwrap();
                status.is_some()
            })
            .await;
        status.expect("exited")
    }

    /// SIGKILL and reap.
    fn kill(&mut self, log: &Log) {
        common::kill(&mut self.child, &who(self.n), log);
    }

    /// SIGTERM: the clean stop exits 0.
    fn stop(&mut self, log: &Log) {
        common::stop(&mut self.child, &who(self.n), log);
    }
}

/// What a life prints once it streams, and after each flush that carried changes.
const STREAMING: &str = " streaming ";
const FLUSHED: &str = " flushed ";

/// `FAILPOINTS` arming each of `points` to abort on its `nth` pass (from 1).
fn armed(points: &[&str], nth: u32) -> String {
    let action = if nth == 1 {
        "return".to_owned()
    } else {
        format!("{}*off->return", nth - 1)
    };
    points
        .iter()
        .map(|p| format!("{p}={action}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Signal numbers as `ExitStatus::signal` reports them (Linux).
mod signo {
    pub const ABRT: i32 = 6;
}

/// The configuration file of every life (each gets its epoch from the election, as a new
/// leader does). Small chunks, so that large transactions are applied in several flushes;
/// `tiny` batches (a few changes) make a life cut the changes it redelivers differently
/// from the life before it, so that a Redis key written ahead of its offset sees older
/// changes again. `replay_window` keeps WAL behind the offsets for a replay.
fn config_text(env: &Env, tiny: bool, replay_window: &str) -> String {
    let batch = if tiny {
        "min_rows = 1\nstart_rows = 4\nmax_rows = 8"
    } else {
        "start_rows = 250\nmax_rows = 4000"
    };
    let order_read_model = pgprism_testkit::shop::order_read_model_pg_and_cache();
    let mut doc: toml::Table = toml::from_str(&format!(
        r#"
pipeline = "{PIPELINE}"
[source]
dsn = "{dsn}"
slot = "pgprism"
publication = "pgprism"
create = false
chunk_changes = 250
[leader]
retry_interval = "100ms"
heartbeat_interval = "100ms"
takeover_after = "1s"
replay_window = "{replay_window}"
[http]
bind = ""
[sinks.pg]
kind = "postgres"
dsn = "{dsn}"
[sinks.cache]
kind = "redis"
url = "{url}"
[batch]
max_age = "100ms"
{batch}
"#,
        dsn = env.dsn,
        url = env.redis.url()
    ))
    .unwrap();
    let projections = [order_read_model, MIRROR.to_owned()]
        .iter()
        .map(|p| toml::Value::Table(toml::from_str(p).unwrap()))
        .collect();
    doc.insert("projections".into(), toml::Value::Array(projections));
    toml::to_string(&doc).unwrap()
}

type Offsets = BTreeMap<&'static str, Offset>;

/// Every target's durable offset (absent before its first start).
async fn offsets(sql: &Client, redis: &mut MultiplexedConnection) -> Offsets {
    let pg_offsets: bool = sql
        .query_one("SELECT to_regclass('pgprism.offsets') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    let mut out = BTreeMap::new();
    for (target, kind) in TARGETS {
        let offset = match kind {
            Kind::Postgres if !pg_offsets => None,
            Kind::Postgres => PgFence::read(sql, PIPELINE, target).await.unwrap(),
            Kind::Redis => RedisFence::read(redis, PIPELINE, target).await.unwrap(),
        };
        if let Some(o) = offset {
            out.insert(target, o);
        }
    }
    out
}

/// A read model's rows by key, each with what only grows in the source: (`updated_at`,
/// length of the customer's name) for an order, (price, length of the name) for a product
/// — the application only ever appends to names and raises prices.
type Versions = HashMap<String, (String, i64)>;

/// Where the rows' versions are read from.
#[derive(Debug, Clone, Copy)]
enum Model {
    OrdersPg,
    OrdersRedis,
    ProductsPg,
    ProductsRedis,
}

const MODELS: [Model; 4] = [
    Model::OrdersPg,
    Model::OrdersRedis,
    Model::ProductsPg,
    Model::ProductsRedis,
];

/// Lua: for every hash matching `ARGV[1]`, its key, field `ARGV[2]` (zero-padded when
/// `ARGV[4]` is `number`, so versions compare as strings) and the length of field
/// `ARGV[3]`. One call instead of a round trip per key.
const VERSIONS_LUA: &str = "
local out = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local v = redis.call('HMGET', k, ARGV[2], ARGV[3])
  local a = v[1] or ''
  if ARGV[4] == 'number' then a = string.format('%012d', tonumber(a) or -1) end
  out[#out + 1] = k
  out[#out + 1] = a
  out[#out + 1] = tostring(string.len(v[2] or ''))
end
return out";

/// The versions of every row of `model`. `updated_at` compares as text: same format, and
/// a shorter fraction ends in `+`, which sorts before any digit.
async fn versions(model: Model, sql: &Client, redis: &mut MultiplexedConnection) -> Versions {
    let query = match model {
        Model::OrdersPg => {
            "SELECT id::text, updated_at::text, length(customer_name) FROM order_read_model"
        }
        Model::ProductsPg => {
            "SELECT id::text, lpad(price_cents::text, 12, '0'), length(name) FROM read.products"
        }
        Model::OrdersRedis | Model::ProductsRedis => {
            let args = match model {
                Model::OrdersRedis => ["order:*", "updated_at", "customer_name", "text"],
                _ => ["product:*", "price_cents", "name", "number"],
            };
            let flat: Vec<String> = redis::Script::new(VERSIONS_LUA)
                .arg(&args[..])
                .invoke_async(redis)
                .await
                .unwrap();
            return flat
                .chunks(3)
                .map(|c| (c[0].clone(), (c[1].clone(), c[2].parse().unwrap())))
                .collect();
        }
    };
    sql.query(query, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), i64::from(r.get::<_, i32>(2)))))
        .collect()
}

/// What the test watches while projectors live and die: every target's offset and every
/// read-model row's version. Neither may go back; a row once gone may not come back (ids
/// are never reused).
struct Watch {
    sql: Client,
    redis: MultiplexedConnection,
    log: Log,
    offsets: Offsets,
    rows: HashMap<String, (Versions, HashSet<String>)>,
    /// The newest guard position of each Redis target at the last death.
    guards: HashMap<&'static str, (Lsn, u64)>,
}

impl Watch {
    /// Sample until `done` says so, at most `PATIENCE`: everything every `SAMPLE_EVERY`;
    /// with `fast`, the Redis read models also in between, as often as they can be read
    /// (a replay that moves a key back and then forward again is seen in between).
    async fn until(&mut self, when: &str, fast: bool, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut next = Instant::now();
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{when}: waited too long\n{}",
                self.log.tail()
            );
            if Instant::now() >= next {
                self.sample(when).await;
                next = Instant::now() + SAMPLE_EVERY;
            } else if fast {
                self.sample_models(when, &[Model::OrdersRedis, Model::ProductsRedis])
                    .await;
            } else {
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }

    /// Every target's offset and every read model's rows.
    async fn sample(&mut self, when: &str) {
        let now = offsets(&self.sql, &mut self.redis).await;
        for (target, offset) in now {
            if let Some(before) = self.offsets.get(target) {
                assert!(
                    offset >= *before,
                    "{when}: the offset of {target} went back from {before:?} to {offset:?}\n{}",
                    self.log.tail()
                );
            }
            self.offsets.insert(target, offset);
        }
        self.sample_models(when, &MODELS).await;
    }

    async fn sample_models(&mut self, when: &str, models: &[Model]) {
        for &model in models {
            let now = versions(model, &self.sql, &mut self.redis).await;
            let (before, gone) = self.rows.entry(format!("{model:?}")).or_default();
            for (key, version) in &now {
                assert!(
                    !gone.contains(key),
                    "{when}: {model:?} {key} came back after it was deleted\n{}",
                    self.log.tail()
                );
                if let Some(old) = before.get(key) {
                    assert!(
                        version.0 >= old.0 && version.1 >= old.1,
                        "{when}: {model:?} {key} went back in time from {old:?} to {version:?}\n{}",
                        self.log.tail()
                    );
                }
            }
            gone.extend(before.keys().filter(|k| !now.contains_key(*k)).cloned());
            *before = now;
        }
    }

    /// Redis targets written since the last call past what their offset covers: the
    /// process died between a batch and its offset write.
    async fn redis_ahead(&mut self) -> usize {
        let mut ahead = 0;
        for (target, prefix) in [
            ("order_read_model.cache", "order:"),
            ("products.cache", "product:"),
        ] {
            let newest = newest_guard(&mut self.redis, prefix).await;
            let (Some((lsn, seq)), Some(o)) = (newest, self.offsets.get(target)) else {
                continue;
            };
            let covered = lsn < o.resume_lsn
                || (o.changes_done > 0 && lsn == o.resume_lsn && seq < o.changes_done);
            let new = self.guards.insert(target, (lsn, seq)) != Some((lsn, seq));
            ahead += usize::from(!covered && new);
        }
        ahead
    }

    /// Bytes of WAL between the server's position and the least advanced target.
    async fn backlog(&self) -> Option<u64> {
        let least = self.offsets.values().map(|o| o.resume_lsn).min()?;
        let wal: String = self
            .sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        Some(wal.parse::<Lsn>().unwrap().0.saturating_sub(least.0))
    }
}

/// The highest guard position under `prefix` (`commit LSN`, `index`), if any.
async fn newest_guard(redis: &mut MultiplexedConnection, prefix: &str) -> Option<(Lsn, u64)> {
    let newest: String = redis::Script::new(
        "local best = ''
         for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
           local v = redis.call('GET', k)
           if v and v > best then best = v end
         end
         return best",
    )
    .arg(format!("pgprism:pos:{prefix}*"))
    .invoke_async(redis)
    .await
    .unwrap();
    let lsn = u64::from_str_radix(newest.get(..16)?, 16).unwrap();
    let seq = u64::from_str_radix(newest.get(16..)?, 16).unwrap();
    Some((Lsn(lsn), seq))
}

/// The application's hot products: renamed by two transactions in a row every round, so
/// that a replay which cut them apart and wrote the first over the second would show.
const HOT_PRODUCTS: &str = "UPDATE products SET name = name || '*'
     WHERE id IN (SELECT id FROM products ORDER BY id LIMIT 3)";

/// The application, in rounds on one session (so nothing deadlocks): the shop workload,
/// a few hot products renamed by two transactions in a row, and now and then a large
/// transaction — every customer renamed (every order recomputed: long flushes) or 600
/// products inserted, updated or deleted at once (handed on in chunks: offsets inside a
/// transaction). It waits while the slot is more than `MAX_BACKLOG` behind.
async fn application(client: Client, stop: Arc<AtomicBool>, seed: u64) -> usize {
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        let backlog: i64 = client
            .query_one(
                "SELECT coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0)
                   FROM pg_replication_slots WHERE slot_name = 'pgprism'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if backlog > MAX_BACKLOG {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        pgprism_testkit::shop::workload(&client, 15, seed.wrapping_add(round as u64)).await;
        for _ in 0..2 {
            client.batch_execute(HOT_PRODUCTS).await.unwrap();
        }
        let bulk = match round % 16 {
            3 | 11 => "UPDATE customers SET name = name || '~'",
            5 => {
                "INSERT INTO products (name, price_cents)
                 SELECT 'bulk ' || g, g FROM generate_series(1, 600) g"
            }
            9 => "UPDATE products SET price_cents = price_cents + 1 WHERE name LIKE 'bulk %'",
            13 => "DELETE FROM products WHERE name LIKE 'bulk %'",
            _ => "",
        };
        if !bulk.is_empty() {
            client.batch_execute(bulk).await.unwrap();
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    round
}

/// Share of the time from `from` to `died` that `life` spent in flushes it finished
/// after `from` (by their `took_us`): about the odds that a kill at a random moment in
/// between lands inside a flush.
fn flushing_share(log: &Log, life: usize, from: Instant, died: Instant) -> f64 {
    let took_us: u64 = log
        .of(&who(life))
        .iter()
        .filter(|l| l.at > from && l.text.contains(FLUSHED))
        .filter_map(|l| {
            let rest = l.text.split(" took_us=").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    let lived = died.saturating_duration_since(from).as_micros().max(1) as f64;
    (took_us as f64 / lived).min(1.0)
}

/// A real Postgres and Redis with the example schema and the mirror's table; the
/// publication holds the four source tables only, so the sinks' own writes (the same
/// database here) do not come back through the slot.
fn env() -> Env {
    let env = Env::shop(MIRROR_DDL);
    env.sql("CREATE PUBLICATION pgprism FOR TABLE customers, products, orders, order_items");
    env.sql("SELECT pg_create_logical_replication_slot('pgprism', 'pgoutput')");
    env
}

/// How the lives ended, for the evidence that the deaths landed where it hurts.
#[derive(Debug, Default)]
struct Tally {
    kills: usize,
    kills_early: usize,
    /// Of the kills after a first flush: the start's transactions (stamping) are over.
    kills_cutting_a_sink_transaction: usize,
    failpoints: BTreeMap<String, usize>,
    deaths_with_redis_ahead: usize,
    flushing: Vec<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_crash_points_lose_nothing_and_apply_nothing_twice() {
    let began = Instant::now();
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    let log = Log::default();
    let (mut rng, seed) = seeded_rng();
    let mut watch = Watch {
        sql: env.client().await,
        redis: env.redis().await,
        log: log.clone(),
        offsets: Offsets::new(),
        rows: HashMap::new(),
        guards: HashMap::new(),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let app = tokio::spawn(application(env.client().await, stop.clone(), seed));
    let mut tally = Tally::default();
    let mut redis_was_ahead = false;
    for n in 0..LIVES {
        // Always after a death that left Redis ahead of its offset: the redelivery.
        let tiny = redis_was_ahead || rng.random_bool(0.1);
        std::fs::write(&config, config_text(&env, tiny, "0")).unwrap();
        // Every third life dies at a failpoint on its Nth pass, in turn after a flush is
        // durable everywhere but not acknowledged, or just before an offset commit to
        // Postgres, to Redis, or to whichever comes first.
        let failpoint = (n % 3 == 2).then(|| {
            let nth = rng.random_range(1..=4);
            let points: &[&str] = match (n / 3) % 4 {
                0 => &["after-sink-commit"],
                1 => &["pg-before-offset-commit"],
                2 => &["redis-before-offset-commit"],
                _ => &["pg-before-offset-commit", "redis-before-offset-commit"],
            };
            armed(points, nth)
        });
        let how = failpoint.as_deref().unwrap_or("kill -9");
        let when = format!(
            "life {n} ({how}{})",
            if tiny { ", tiny batches" } else { "" }
        );
        let cut_before = env.pg.log_contents().matches(CUT_OFF).count();
        let mut life = Life::start(&config, failpoint.as_deref(), n, &log);
        // Killed after its first flush, so the start's own transactions are behind it.
        let mut killed_streaming = false;
        if failpoint.is_some() {
            life.printed(STREAMING, &log).await;
            let status = life.exit(&mut watch, &when, tiny).await;
            assert_eq!(
                status.signal(),
                Some(signo::ABRT),
                "{when}: {status:?}\n{}",
                log.tail()
            );
            // Its last words, once the reader thread has them.
            life.printed("failpoint ", &log).await;
            let name = log
                .of(&who(n))
                .iter()
                .find_map(|l| {
                    l.text
                        .strip_prefix("failpoint ")?
                        .strip_suffix(" hit")
                        .map(str::to_owned)
                })
                .expect("the failpoint's line");
            *tally.failpoints.entry(name).or_default() += 1;
        } else {
            // Some deaths while starting (stamping, the first flush's connections); most
            // while streaming and flushing, after a first flush so that each such life
            // makes progress.
            let early = rng.random_bool(0.2);
            let first_flush = if early {
                None
            } else {
                life.printed(STREAMING, &log).await;
                Some(life.printed(FLUSHED, &log).await)
            };
            let until = Instant::now() + Duration::from_millis(rng.random_range(0..700));
            watch.until(&when, tiny, || Instant::now() >= until).await;
            let died = Instant::now();
            life.kill(&log);
            tally.kills += 1;
            tally.kills_early += usize::from(early);
            killed_streaming = !early;
            if let Some(from) = first_flush {
                tally.flushing.push(flushing_share(&log, n, from, died));
            }
        }
        let when = format!("after the death of {when}");
        watch.sample(&when).await;
        // Read the log once the dead life's sessions are gone.
        sessions_gone(&watch.sql, &log, &when).await;
        let cut = env.pg.log_contents().matches(CUT_OFF).count() > cut_before;
        if killed_streaming {
            tally.kills_cutting_a_sink_transaction += usize::from(cut);
        }
        let ahead = watch.redis_ahead().await;
        redis_was_ahead = ahead > 0;
        tally.deaths_with_redis_ahead += usize::from(ahead > 0);
        let flushes = log
            .of(&who(n))
            .iter()
            .filter(|l| l.text.contains(FLUSHED))
            .count();
        let backlog = watch.backlog().await;
        let backlog = backlog.map_or("-".to_owned(), |b| format!("{} kB", b / 1024));
        eprintln!(
            "{when}: {flushes} flushes, {ahead} Redis targets ahead of their offset, \
             WAL backlog {backlog}"
        );
    }

    // The application stops; the last life catches up with everything and stops cleanly.
    stop.store(true, Ordering::Relaxed);
    let rounds = app.await.unwrap();
    std::fs::write(&config, config_text(&env, false, "0")).unwrap();
    let mut last = Life::start(&config, None, LIVES, &log);
    last.printed(STREAMING, &log).await;
    let marker = env.marker();
    let what = || format!("the targets never reached the marker {marker}");
    eventually(&log, SAMPLE_EVERY, what, async || {
        watch.sample("catching up").await;
        let at = &watch.offsets;
        (at.len() == TARGETS.len() && at.values().all(|o| o.resume_lsn >= marker)).then_some(())
    })
    .await;
    last.child.signal(Signal::Term).unwrap();
    let status = last.exit(&mut watch, "after SIGTERM", false).await;
    assert!(status.success(), "on SIGTERM: {status:?}\n{}", log.tail());
    watch.sample("after a clean stop").await;

    let dead: i64 = watch
        .sql
        .query_one("SELECT count(*) FROM pgprism.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "dead letters\n{}", log.tail());
    let truth = env.rows(TRUTH).await;
    assert!(
        truth.len() > 50,
        "the workload leaves orders: {}",
        truth.len()
    );
    assert_same(
        &env.rows(MODEL).await,
        &truth,
        "order_read_model vs the ground truth",
    );
    assert_same(
        &env.redis_rows("order:*", &ORDER_COLUMNS).await,
        &truth,
        "Redis order:* vs the ground truth",
    );
    let products = env.rows(PRODUCTS).await;
    assert_same(
        &env.rows(MIRRORED).await,
        &products,
        "read.products vs products",
    );
    assert_same(
        &env.redis_rows("product:*", &PRODUCT_COLUMNS).await,
        &products,
        "Redis product:* vs products",
    );

    tally.flushing.sort_by(f64::total_cmp);
    let median = tally.flushing.get(tally.flushing.len() / 2).copied();
    eprintln!(
        "{LIVES} deaths: {} kill -9 ({} early in the start; of the others, {} cut a \
         Postgres sink transaction off), failpoints {:?}; deaths leaving Redis data ahead of \
         its offset: {}; share of a life spent flushing, median {:.0}%; {rounds} application \
         rounds, {} orders, {} products; seed {seed}; test took {:?}",
        tally.kills,
        tally.kills_early,
        tally.kills_cutting_a_sink_transaction,
        tally.failpoints,
        tally.deaths_with_redis_ahead,
        median.unwrap_or(0.0) * 100.0,
        truth.len(),
        products.len(),
        began.elapsed()
    );
    // Crash points inside the writes are the ones that matter; if no kill reached one,
    // this run proved little (flushes got much faster, or kills much earlier).
    assert!(
        tally.kills_cutting_a_sink_transaction > 0 && tally.deaths_with_redis_ahead > 0,
        "no death landed inside a write: {tally:?}"
    );
}

/// Everything a reader can see: both read models in Postgres and their Redis hashes.
async fn read_side(env: &Env) -> [Vec<Vec<String>>; 4] {
    [
        env.rows(MODEL).await,
        env.rows(MIRRORED).await,
        env.redis_rows("order:*", &ORDER_COLUMNS).await,
        env.redis_rows("product:*", &["name", "price_cents"]).await,
    ]
}

/// A kill -9 inside a replay's one transaction (flushes of tiny batches, so it stays open
/// across hundreds of them): readers see the read models exactly as before the replay —
/// during it, after the kill, and while the next life applies the whole replay again —
/// in Postgres and in Redis, and the end state is the ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_inside_a_replay_transaction_shows_readers_nothing_older() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgprism.toml");
    let log = Log::default();
    // The slot keeps the WAL a replay needs.
    let write_config =
        |tiny: bool| std::fs::write(&config, config_text(&env, tiny, "1GB")).unwrap();
    let mut sql = env.client().await;
    let mut redis = env.redis().await;
    let reached = async |sql: &mut Client, redis: &mut MultiplexedConnection, to: Lsn| {
        let at = offsets(sql, redis).await;
        at.len() == TARGETS.len() && at.values().all(|o| o.resume_lsn >= to)
    };

    // A history to replay: after `saved`, orders come and go and every product is renamed.
    let writer = env.client().await;
    pgprism_testkit::shop::workload(&writer, 150, 31).await;
    let saved = env.marker();
    pgprism_testkit::shop::workload(&writer, 300, 32).await;
    env.sql("UPDATE products SET name = name || ' (renamed)'");
    pgprism_testkit::shop::workload(&writer, 150, 33).await;
    let end = env.marker();
    write_config(false);
    let mut first = Life::start(&config, None, 0, &log);
    let what = || format!("life 0 never reached {end}");
    eventually(&log, SAMPLE_EVERY, what, async || {
        reached(&mut sql, &mut redis, end).await.then_some(())
    })
    .await;
    first.stop(&log);
    let before = read_side(&env).await;
    let truth = env.rows(TRUTH).await;
    assert!(truth.len() > 20, "orders: {}", truth.len());
    assert_same(&before[0], &truth, "order_read_model before the replay");
    assert_same(&before[2], &truth, "Redis before the replay");

    // The replay, as an operator asks for it: a new epoch, every target back at `saved`.
    let replay = pgprism()
        .args(["replay", "-c"])
        .arg(&config)
        .args(["--from-lsn", &saved.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "pgprism replay: {}{said}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(
        said.matches(": rewound from ").count(),
        TARGETS.len(),
        "every target rewound: {said}"
    );
    let unchanged = async |when: &str| {
        let now = read_side(&env).await;
        for (i, what) in [
            "order_read_model",
            "read.products",
            "Redis order:*",
            "Redis product:*",
        ]
        .iter()
        .enumerate()
        {
            assert_same(&now[i], &before[i], &format!("{what} {when}"));
        }
    };

    // Life 1 replays with tiny batches and is killed a few dozen flushes in.
    write_config(true);
    let cut_before = env.pg.log_contents().matches(CUT_OFF).count();
    let mut life = Life::start(&config, None, 1, &log);
    life.printed(STREAMING, &log).await;
    let what = || "life 1 never flushed 30 times".to_owned();
    eventually(&log, SAMPLE_EVERY, what, async || {
        unchanged("during the replay").await;
        let flushes = log
            .of(&who(1))
            .iter()
            .filter(|l| l.text.contains(FLUSHED))
            .count();
        (flushes >= 30).then_some(())
    })
    .await;
    life.kill(&log);
    // The server logs the cut-off transaction once the dead sessions are gone.
    sessions_gone(&sql, &log, "after the kill in the replay").await;
    assert!(
        env.pg.log_contents().matches(CUT_OFF).count() > cut_before,
        "the kill cut the replay transaction\n{}",
        log.tail()
    );
    unchanged("after the kill inside the replay").await;
    let after_kill = offsets(&sql, &mut redis).await;
    assert!(
        TARGETS
            .iter()
            .filter(|(_, k)| *k == Kind::Postgres)
            .all(|(t, _)| after_kill[t].resume_lsn < end),
        "Postgres offsets stayed rewound: {after_kill:?}"
    );

    // Life 2 applies the whole replay again and commits it at its end.
    write_config(false);
    let mut last = Life::start(&config, None, 2, &log);
    let what = || format!("life 2 never reached {end}");
    eventually(&log, SAMPLE_EVERY, what, async || {
        unchanged("while the replay is applied again").await;
        reached(&mut sql, &mut redis, end).await.then_some(())
    })
    .await;
    last.stop(&log);
    unchanged("after the replay").await;
    assert_same(
        &env.rows(MODEL).await,
        &env.rows(TRUTH).await,
        "order_read_model at the end",
    );
}
