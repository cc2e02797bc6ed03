//! Sinks under trouble, against a real Postgres and Redis: lock waits shrink the batch and
//! are retried, dropped sessions and a restarted Redis are reconnected, and a deposed
//! leader's batch is refused by the fence.

mod common;

use std::time::Duration;

use common::{Env, PRODUCTS_MIRROR, assert_same, projection};
use pgprism_decoder::stream::{ReplicationStream, StreamConfig};
use pgprism_pg::Dsn;
use pgprism_sink::Projector;
use pgprism_sink::drive::{DriveError, DriveOptions, drive};
use pgprism_testkit::RedisServer;
use tokio::sync::watch;

const PRODUCTS: &str = "
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price_cents int NOT NULL);
CREATE TABLE products_copy (id int PRIMARY KEY, name text, price_cents int);";

async fn check_products(env: &Env) {
    let source = env
        .rows("SELECT id::text, name, price_cents::text FROM products")
        .await;
    let copy = env
        .rows("SELECT id::text, name, price_cents::text FROM products_copy")
        .await;
    assert_same(&copy, &source, "products_copy");
    let mut conn = env.redis().await;
    for row in &source {
        let name: Option<String> = redis::cmd("HGET")
            .arg(format!("product:{}", row[0]))
            .arg("name")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(name.as_ref(), Some(&row[1]), "product:{} in Redis", row[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_shrinks_the_batch_and_the_flush_is_retried() {
    let env = Env::new(PRODUCTS);
    let mut cfg = env.config(vec![projection(PRODUCTS_MIRROR)], 1);
    cfg.batch.lock_timeout = Duration::from_millis(200);
    env.sql("INSERT INTO products SELECT g, 'p' || g, g FROM generate_series(1, 100) g");
    let mut projector = Projector::start(&cfg).await.unwrap();
    let start_size = projector.batch_size();

    // A reader holds the target table for a while.
    let blocker = env.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE products_copy IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Held until the sink's flush has waited for it in two transactions: the first one's
    // lock wait timed out and the batch was retried (a fixed delay could end before a slow
    // machine's first flush even started).
    let watcher = env.client().await;
    let release = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut waits = std::collections::BTreeSet::new();
        while waits.len() < 2 && std::time::Instant::now() < deadline {
            for row in watcher
                .query(
                    "SELECT xact_start::text FROM pg_stat_activity
                      WHERE application_name LIKE 'pgprism sink %' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
            {
                waits.insert(row.get::<_, String>(0));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        blocker.batch_execute("COMMIT").await.unwrap();
        assert!(
            waits.len() >= 2,
            "the flush never waited for the lock twice: {waits:?}"
        );
    });
    let reports = env.run_with(&mut projector, 0).await;
    release.await.unwrap();
    let lanes: Vec<_> = reports.iter().flat_map(|r| r.lanes.iter()).collect();
    assert!(
        lanes
            .iter()
            .any(|(name, l)| name == "products.pg" && l.retries > 0 && l.contended),
        "the lock wait was retried: {lanes:?}"
    );
    assert!(
        projector.batch_size() < start_size,
        "contention shrank the batch: {} -> {}",
        start_size,
        projector.batch_size()
    );
    check_products(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_sink_sessions_and_a_restarted_redis_are_reconnected() {
    let env = Env::with_redis(
        PRODUCTS,
        RedisServer::builder().persistent(true).start().unwrap(),
    );
    let cfg = env.config(vec![projection(PRODUCTS_MIRROR)], 1);
    env.sql("INSERT INTO products SELECT g, 'p' || g, g FROM generate_series(1, 50) g");
    let (mut projector, _) = env.run(&cfg, 0).await;
    check_products(&env).await;

    // Kill the sink's Postgres session and restart Redis under the running projector.
    let killed = env.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name LIKE 'pgprism sink %'",
    );
    assert_eq!(killed.trim(), "1");
    env.redis.restart().unwrap();
    env.sql("UPDATE products SET name = name || ' v2'; INSERT INTO products VALUES (51, 'new', 1)");
    let reports = env.run_with(&mut projector, 0).await;
    let retried: Vec<_> = reports
        .iter()
        .flat_map(|r| r.lanes.iter())
        .filter(|(_, l)| l.retries > 0)
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        retried.contains(&"products.pg".to_owned())
            && retried.contains(&"products.cache".to_owned()),
        "both targets retried after reconnecting: {retried:?}"
    );
    check_products(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_batch_is_refused_by_every_target() {
    let env = Env::new(PRODUCTS);
    env.sql("INSERT INTO products VALUES (1, 'before', 1)");
    let (old, _) = env
        .run(&env.config(vec![projection(PRODUCTS_MIRROR)], 1), 0)
        .await;
    drop(old);
    let mut old = Projector::start(&env.config(vec![projection(PRODUCTS_MIRROR)], 1))
        .await
        .unwrap();
    // A new leader takes over (stamps epoch 2 on every target) while the old one lives on.
    let _new = Projector::start(&env.config(vec![projection(PRODUCTS_MIRROR)], 2))
        .await
        .unwrap();
    env.sql("UPDATE products SET name = 'stale' WHERE id = 1");
    let until = env.marker();
    let mut stream_cfg = StreamConfig::new(Dsn::parse(&env.dsn).unwrap(), "pgprism", "pgprism");
    stream_cfg.start_lsn = old.resume_lsn();
    let mut stream = ReplicationStream::open(stream_cfg).await.unwrap();
    let (_tx, mut stop) = watch::channel(false);
    let opts = DriveOptions {
        replay_window: 0,
        until: Some(until),
    };
    let err = drive(&mut old, &mut stream, &mut stop, &opts, |_| {})
        .await
        .expect_err("the old leader is fenced");
    assert!(
        matches!(&err, DriveError::Sink(e) if e.is_fenced()),
        "{err}"
    );
    assert_eq!(
        env.rows("SELECT name FROM products_copy").await,
        [["before".to_owned()]]
    );
    let mut conn = env.redis().await;
    let name: Option<String> = redis::cmd("HGET")
        .arg("product:1")
        .arg("name")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("before"));
}
