//! Existing rows: a pipeline started on a database that already holds a shop loads every
//! row into every read model (mirror and query projection, Postgres and Redis) while the
//! application keeps writing, and each read model ends equal to its source.

mod common;

use common::{
    Env, PRODUCTS_MIRROR, READ_MODELS, SCHEMA, assert_orders_match_truth, assert_same,
    order_read_model_toml, projection, redis_rows,
};
use pgprism_testkit::shop::{seed_sql, workload_on_existing};

const PRODUCTS_COPY: &str = "CREATE TABLE products_copy (LIKE products INCLUDING ALL);";

/// Orders that exist before the first start (`PGPRISM_TEST_BACKFILL_ORDERS` overrides).
fn existing_orders() -> usize {
    std::env::var("PGPRISM_TEST_BACKFILL_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_are_loaded_while_the_application_writes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("pgprism_sink=debug")
        .with_test_writer()
        .try_init();
    let orders = existing_orders();
    // The rows exist before the slot: only a backfill can bring them.
    let env = Env::new(&format!(
        "{SCHEMA}\n{READ_MODELS}\n{PRODUCTS_COPY}\n{}",
        seed_sql(orders)
    ));
    let mut cfg = env.config(
        vec![
            projection(&order_read_model_toml()),
            projection(PRODUCTS_MIRROR),
        ],
        1,
    );
    cfg.backfill.chunk_size = 2_000;
    let writer = env.client().await;
    let workload = tokio::spawn(async move { workload_on_existing(&writer, 1_500, 11).await });
    let mut projector = pgprism_sink::Projector::start(&cfg).await.unwrap();
    assert!(projector.backfilling());
    let mut rounds = 0;
    let mut seen_backfilling = false;
    while !workload.is_finished() {
        env.run_with(&mut projector, 0).await;
        seen_backfilling |= rounds == 0;
        rounds += 1;
    }
    workload.await.unwrap();
    env.run_with(&mut projector, 0).await;
    assert!(seen_backfilling && !projector.backfilling());

    let truth = assert_orders_match_truth(&env, "after the backfill").await;
    assert!(
        truth.len() >= orders * 9 / 10,
        "most seeded orders remain: {} of {orders}",
        truth.len()
    );
    let products = "SELECT id::text, name, price_cents::text FROM products";
    assert_same(
        &env.rows(&products.replace("products", "products_copy"))
            .await,
        &env.rows(products).await,
        "products_copy vs products",
    );
    assert_same(
        &redis_rows(&env, "product:*", &["id", "name", "price_cents"]).await,
        &env.rows(products).await,
        "Redis product hashes vs products",
    );
    // The state committed with the last chunk: done, every row counted once.
    let state = env.sql(
        "SELECT backfill::json->>'state', backfill::json->>'rows'
           FROM pgprism.offsets WHERE sink = 'products.pg'",
    );
    assert!(state.starts_with("done|"), "{state}");
}

/// A target added to a running pipeline backfills while the existing targets keep
/// streaming: a mirror caught up earlier (its own backfill long done) takes a steady
/// stream of updates through three restarts, the last one with a large mirror added; at
/// the end both copies equal their sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_keep_streaming_while_an_added_target_backfills() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use pgprism_decoder::stream::{ReplicationStream, StreamConfig};
    use pgprism_pg::Dsn;
    use pgprism_sink::drive::{DriveOptions, drive};

    let orders = existing_orders() * 2;
    let env = Env::new(&format!(
        "{SCHEMA}\n{PRODUCTS_COPY}\nCREATE TABLE orders_copy (LIKE orders INCLUDING ALL);\n{}",
        seed_sql(orders)
    ));
    let products = r#"
name = "products"
kind = "mirror"
source = "public.products"
[[targets]]
sink = "pg"
table = "public.products_copy"
"#;
    let orders_mirror = r#"
name = "orders"
kind = "mirror"
source = "public.orders"
[[targets]]
sink = "pg"
table = "public.orders_copy"
"#;
    let mut cfg = env.config(vec![projection(products)], 1);
    cfg.backfill.chunk_size = std::env::var("PGPRISM_TEST_BACKFILL_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    env.run(&cfg, 0).await;
    let ids: Vec<String> = env
        .rows("SELECT id::text FROM products")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    for (epoch, with_orders) in [(2, false), (3, true)] {
        cfg.epoch = pgprism_leader::Epoch(epoch);
        if with_orders {
            cfg.projections.push(projection(orders_mirror));
        }
        let mut projector = pgprism_sink::Projector::start(&cfg).await.unwrap();
        let mut scfg = StreamConfig::new(Dsn::parse(&env.dsn).unwrap(), "pgprism", "pgprism");
        scfg.start_lsn = projector.resume_lsn();
        let mut stream = ReplicationStream::open(scfg).await.unwrap();
        let stop_writing = Arc::new(AtomicBool::new(false));
        let writer = {
            let client = env.client().await;
            let ids = ids.clone();
            let stop = stop_writing.clone();
            tokio::spawn(async move {
                let mut n = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = &ids[(n as usize * 7919) % ids.len()];
                    client
                        .execute(
                            "UPDATE products SET price_cents = $1 WHERE id = $2::text::uuid",
                            &[&(10_000 + n), id],
                        )
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        let control = async {
            if with_orders {
                let c = env.client().await;
                loop {
                    let s: Option<String> = c
                        .query_opt(
                            "SELECT backfill::json->>'state' FROM pgprism.offsets WHERE sink = 'orders.pg'",
                            &[],
                        )
                        .await
                        .unwrap()
                        .and_then(|r| r.get(0));
                    if s.as_deref() == Some("done") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            stop_writing.store(true, Ordering::Relaxed);
            writer.await.unwrap();
            // Everything written is committed: let the stream bring it, then stop.
            let until = env.marker();
            while projector_ack(&env).await < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop_tx.send(true).unwrap();
        };
        let opts = DriveOptions {
            replay_window: 0,
            until: None,
        };
        let driving = async {
            drive(&mut projector, &mut stream, &mut stop, &opts, |_| {})
                .await
                .unwrap()
        };
        tokio::time::timeout(Duration::from_secs(180), async {
            tokio::join!(driving, control)
        })
        .await
        .expect("done within 180 s");
        stream.shutdown(Duration::from_secs(5)).await.ok();
        let products = "SELECT id::text, name, price_cents::text FROM products";
        assert_same(
            &env.rows(&products.replace("products", "products_copy"))
                .await,
            &env.rows(products).await,
            &format!("products_copy vs products after life {epoch}"),
        );
    }
    let orders = "SELECT id::text, customer_id::text, status, total_cents::text FROM orders";
    assert_same(
        &env.rows(&orders.replace("orders", "orders_copy")).await,
        &env.rows(orders).await,
        "orders_copy vs orders",
    );
}

/// The smallest offset of the products target (what its copy is known to hold).
async fn projector_ack(env: &Env) -> pgprism_decoder::Lsn {
    env.client()
        .await
        .query_one(
            "SELECT resume_lsn::text FROM pgprism.offsets WHERE sink = 'products.pg'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap()
}
