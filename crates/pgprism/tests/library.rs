//! The run loop as a library: `pgprism::run(config, stop)` in this test's own runtime,
//! against a real Postgres and Redis — the same code `pgprism run` executes, without a
//! process around it — and a clean stop through the `stop` channel.

mod common;

use std::time::{Duration, Instant};

use common::rows;

use pgprism_testkit::{PgServer, RedisServer};
use tokio::sync::watch;

const SCHEMA: &str = include_str!("../../../sql/schema.sql");
const READ_MODELS: &str = include_str!("../../../sql/read_models.sql");
const EXAMPLE: &str = include_str!("../../../pgprism.example.toml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_loop_runs_in_process_and_stops_when_asked() {
    let pg = PgServer::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(&db, &format!("{SCHEMA}\n{READ_MODELS}")).unwrap();
    let env = [
        ("PGPRISM_SOURCE_DSN", dsn.as_str()),
        ("PGPRISM_SINKS_PG_DSN", dsn.as_str()),
        ("PGPRISM_SINKS_CACHE_URL", &redis.url()),
        ("PGPRISM_HTTP_BIND", ""),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let cfg = pgprism::Config::parse(EXAMPLE, "pgprism.example.toml", env).unwrap();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(pgprism::run(cfg, stopped));

    let writer = pg.client(&db).await.unwrap();
    pgprism_testkit::shop::workload(&writer, 300, 5).await;
    let truth = "SELECT * FROM order_read_model_truth";
    let started = Instant::now();
    loop {
        let t = rows(&pg, &db, truth);
        if !t.is_empty() && t == rows(&pg, &db, "SELECT * FROM order_read_model") {
            break;
        }
        assert!(
            !running.is_finished(),
            "run ended early: {:?}",
            running.await
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "order_read_model never matched the truth"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop: the loop drains, releases the leader lock and returns Ok.
    stop.send_replace(true);
    let result = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("run returns within the shutdown deadline")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    // The sessions end with the client; the server notices within moments.
    let left = "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')
                    || ' ' || (SELECT count(*) FROM pg_stat_replication)";
    let started = Instant::now();
    while pg.psql(&db, left).unwrap().trim() != "0 0" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "leader lock or replication session left behind: {}",
            pg.psql(&db, left).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
