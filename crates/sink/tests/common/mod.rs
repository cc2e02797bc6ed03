//! Shared helpers of the sink tests: a real Postgres and Redis from the testkit, the
//! example schema, and a pipeline run from the replication slot until a given point.

#![allow(dead_code, missing_docs, unused_imports)]

use std::collections::BTreeMap;
use std::time::Duration;

use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{ReplicationStream, StreamConfig, StreamEvent};
use pgprism_leader::Epoch;
use pgprism_pg::Dsn;
use pgprism_sink::drive::{DriveError, DriveOptions, drive};
use pgprism_sink::spec::{BatchSpec, ProjectionSpec, SinkSpec};
use pgprism_sink::{FlushReport, Projector, ProjectorConfig};
use pgprism_testkit::{PgServer, RedisServer};
use tokio::sync::watch;

pub use pgprism_testkit::shop::{MODEL, ORDER_COLUMNS, READ_MODELS, SCHEMA, TRUTH, assert_same};

/// A mirror of `public.products` into `public.products_copy` and `product:{id}` hashes.
pub const PRODUCTS_MIRROR: &str = r#"
name = "products"
kind = "mirror"
source = "public.products"
[[targets]]
sink = "pg"
table = "public.products_copy"
[[targets]]
sink = "cache"
key = "product:{id}"
"#;

/// The order read model as configured by a user: Postgres table and Redis hashes.
pub fn order_read_model_toml() -> String {
    pgprism_testkit::shop::order_read_model_pg_and_cache()
}

pub fn projection(toml_text: &str) -> ProjectionSpec {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"))
}

/// A database on a real Postgres with a publication and slot, and a Redis.
pub struct Env {
    pub pg: PgServer,
    pub redis: RedisServer,
    pub db: String,
    pub dsn: String,
}

impl Env {
    pub fn new(schema: &str) -> Env {
        Env::with_redis(schema, RedisServer::start().expect("start redis"))
    }

    pub fn with_redis(schema: &str, redis: RedisServer) -> Env {
        Env::with_servers(schema, PgServer::start().expect("start postgres"), redis)
    }

    pub fn with_servers(schema: &str, pg: PgServer, redis: RedisServer) -> Env {
        let (db, dsn) = pg.fresh_database().expect("database");
        let env = Env { pg, redis, db, dsn };
        env.sql(schema);
        env.sql("CREATE PUBLICATION pgprism FOR ALL TABLES");
        env.sql("SELECT pg_create_logical_replication_slot('pgprism', 'pgoutput')");
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

    pub fn sinks(&self) -> BTreeMap<String, SinkSpec> {
        BTreeMap::from([
            (
                "pg".to_owned(),
                SinkSpec::postgres(Dsn::parse(&self.dsn).unwrap()),
            ),
            ("cache".to_owned(), SinkSpec::redis(self.redis.url())),
        ])
    }

    pub fn config(&self, projections: Vec<ProjectionSpec>, epoch: i64) -> ProjectorConfig {
        ProjectorConfig {
            pipeline: "test".to_owned(),
            lock_key: pgprism_leader::lock_key("test"),
            epoch: Epoch(epoch),
            source: Dsn::parse(&self.dsn).unwrap(),
            sinks: self.sinks(),
            projections,
            batch: BatchSpec::default(),
            takeover_after: Duration::from_secs(5),
            backfill: Default::default(),
        }
    }

    /// A transactional marker: its commit ends after everything committed before it.
    pub fn marker(&self) -> Lsn {
        self.sql("SELECT pg_logical_emit_message(true, 'pgprism-test', 'mark')")
            .trim()
            .parse()
            .unwrap()
    }

    /// Start a projector and run it from the slot until everything committed so far is
    /// durable in every target. `replay_window` keeps the slot from moving (for replays).
    pub async fn run(
        &self,
        cfg: &ProjectorConfig,
        replay_window: u64,
    ) -> (Projector, Vec<FlushReport>) {
        let mut projector = Projector::start(cfg).await.expect("projector starts");
        let reports = self.run_with(&mut projector, replay_window).await;
        (projector, reports)
    }

    pub async fn run_with(
        &self,
        projector: &mut Projector,
        replay_window: u64,
    ) -> Vec<FlushReport> {
        let until = self.marker();
        self.run_until(projector, replay_window, until).await
    }

    /// Run until everything before `until` is durable in every target.
    pub async fn run_until(
        &self,
        projector: &mut Projector,
        replay_window: u64,
        until: Lsn,
    ) -> Vec<FlushReport> {
        self.try_run_until(projector, replay_window, until)
            .await
            .expect("pipeline runs")
    }

    /// Push the stream's chunks straight into `projector` until everything committed
    /// before `until` is in, with no `drive` around it — no flush when the stream pauses
    /// or a deadline passes, only when a batch is full — then flush once. For tests whose
    /// flushes must fall at the same places in every run.
    pub async fn push_until(&self, projector: &mut Projector, until: Lsn) -> Vec<FlushReport> {
        let mut stream_cfg =
            StreamConfig::new(Dsn::parse(&self.dsn).unwrap(), "pgprism", "pgprism");
        stream_cfg.start_lsn = projector.resume_lsn();
        let mut stream = ReplicationStream::open(stream_cfg).await.expect("stream");
        let mut reports = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(120), stream.next())
                .await
                .expect("the stream reached the marker within 120 s")
                .expect("stream");
            if let StreamEvent::Chunk(chunk) = event {
                if chunk.txn.commit_lsn >= until {
                    break;
                }
                if let Some(report) = projector.push(&chunk).await.expect("push") {
                    reports.push(report);
                }
            }
        }
        reports.push(projector.flush().await.expect("flush"));
        stream
            .shutdown(Duration::from_secs(5))
            .await
            .expect("clean stop");
        reports
    }

    /// Like [`Env::run_until`], returning the pipeline's error instead of panicking.
    pub async fn try_run_until(
        &self,
        projector: &mut Projector,
        replay_window: u64,
        until: Lsn,
    ) -> Result<Vec<FlushReport>, DriveError> {
        let mut stream_cfg =
            StreamConfig::new(Dsn::parse(&self.dsn).unwrap(), "pgprism", "pgprism");
        stream_cfg.start_lsn = projector.resume_lsn();
        let mut stream = ReplicationStream::open(stream_cfg).await.expect("stream");
        let (_stop_tx, mut stop) = watch::channel(false);
        let opts = DriveOptions {
            replay_window,
            until: Some(until),
        };
        let mut reports = Vec::new();
        let result = tokio::time::timeout(
            Duration::from_secs(120),
            drive(projector, &mut stream, &mut stop, &opts, |r| {
                reports.push(r.clone())
            }),
        )
        .await
        .expect("pipeline caught up within 120 s");
        stream
            .shutdown(Duration::from_secs(5))
            .await
            .expect("clean stop");
        result.map(|()| reports)
    }

    /// Rows of `sql` as text (NULL as "∅"), sorted.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        pgprism_testkit::shop::rows(&self.client().await, sql).await
    }
}

pub use pgprism_testkit::shop::workload as shop_workload;

/// Every Redis hash matching `pattern`, as rows of `columns` (missing fields as "∅"), sorted.
pub async fn redis_rows(env: &Env, pattern: &str, columns: &[&str]) -> Vec<Vec<String>> {
    pgprism_testkit::shop::redis_rows(&mut env.redis().await, pattern, columns).await
}

/// `order_read_model` in Postgres and the `order:{id}` hashes in Redis, each equal to the
/// ground truth (`what` says when); the truth's rows.
pub async fn assert_orders_match_truth(env: &Env, what: &str) -> Vec<Vec<String>> {
    let truth = env.rows(TRUTH).await;
    assert_same(
        &env.rows(MODEL).await,
        &truth,
        &format!("{what}: order_read_model vs the ground truth"),
    );
    assert_same(
        &redis_rows(env, "order:*", &ORDER_COLUMNS).await,
        &truth,
        &format!("{what}: Redis hashes vs the ground truth"),
    );
    truth
}
