//! The seed example end to end: `order_read_model` kept by a query projection from a real
//! replication slot, in Postgres and in Redis, equal to the ground truth after a
//! randomized workload over all four tables — and unchanged by redelivery.

mod common;

use common::{
    Env, MODEL, ORDER_COLUMNS, READ_MODELS, SCHEMA, TRUTH, assert_orders_match_truth, assert_same,
    order_read_model_toml, projection, redis_rows, shop_workload,
};
use pgprism_leader::Offset;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_read_model_equals_the_ground_truth_in_postgres_and_redis() {
    let env = Env::new(&format!("{SCHEMA}\n{READ_MODELS}"));
    let cfg = env.config(vec![projection(&order_read_model_toml())], 1);
    let client = env.client().await;

    // The pipeline runs while the application writes, so recomputes see intermediate
    // states: a customer renamed after its orders were projected must reach them.
    let writer = env.client().await;
    let workload = tokio::spawn(async move { shop_workload(&writer, 1_500, 7).await });
    let mut projector = pgprism_sink::Projector::start(&cfg).await.unwrap();
    let mut reports = Vec::new();
    let mut rounds = 0;
    while !workload.is_finished() {
        // Keep the WAL (replay window) so the same changes can be delivered again below.
        reports.extend(env.run_with(&mut projector, u64::MAX).await);
        rounds += 1;
    }
    workload.await.unwrap();
    reports.extend(env.run_with(&mut projector, u64::MAX).await);
    assert!(
        rounds > 1,
        "the pipeline ran during the workload ({rounds} rounds)"
    );
    let truth = assert_orders_match_truth(&env, "after the workload").await;
    assert!(
        truth.len() > 100,
        "the workload leaves orders: {}",
        truth.len()
    );
    let written: u64 = reports.iter().map(|r| r.written).sum();
    assert!(written > 0 && reports.iter().all(|r| r.dead_letters == 0));
    // What `pgprism status` reports: both targets at the same offset, nothing dead.
    let status = pgprism_sink::status::read(&cfg, "pgprism").await.unwrap();
    let offsets: Vec<_> = status
        .targets
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.resume_lsn.clone(),
                t.dead_letters,
                t.epoch,
            )
        })
        .collect();
    assert_eq!(offsets.len(), 2, "{status:#?}");
    assert!(
        offsets
            .iter()
            .all(|o| o.1.is_some() && o.1 == offsets[0].1 && o.2 == Some(0) && o.3 == Some(1)),
        "{status:#?}"
    );
    assert!(
        status
            .targets
            .iter()
            .all(|t| t.lag_bytes.is_some_and(|b| b < 1 << 20)),
        "{status:#?}"
    );
    let slot = status.slot.as_ref().expect("slot");
    assert!(slot.retained_wal_bytes.is_some_and(|b| b > 0) && slot.confirmed_flush_lsn.is_some());
    drop(projector);

    // More changes, then the same changes delivered again from the start of the slot
    // (a crash before the offsets were stored): nothing changes, nothing goes back.
    shop_workload(&client, 300, 8).await;
    let (mut projector, _) = env.run(&cfg, u64::MAX).await;
    let truth = env.rows(TRUTH).await;
    assert_same(
        &env.rows(MODEL).await,
        &truth,
        "order_read_model after more changes",
    );
    assert_same(
        &redis_rows(&env, "order:*", &ORDER_COLUMNS).await,
        &truth,
        "Redis after more changes",
    );
    projector
        .rewind(Offset::default(), &[])
        .await
        .expect("rewind");
    let reports = env.run_with(&mut projector, u64::MAX).await;
    assert!(
        reports.iter().map(|r| r.changes).sum::<usize>() > 1_000,
        "the whole history was delivered again"
    );
    assert_same(
        &env.rows(MODEL).await,
        &truth,
        "order_read_model after redelivery",
    );
    assert_same(
        &redis_rows(&env, "order:*", &ORDER_COLUMNS).await,
        &truth,
        "Redis after redelivery",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_query_fails_for_is_dead_lettered_held_and_retried() {
    use pgprism_sink::dead_letter::{self, Action, Selection};
    let env = Env::new(&format!(
        "{SCHEMA}
         CREATE TABLE order_ratio (id uuid PRIMARY KEY, per_item int);"
    ));
    // The query divides by the item count: it fails for an order without items.
    let mut cfg = env.config(
        vec![projection(
            r#"
name = "ratio"
kind = "query"
key = ["id"]
query = """SELECT o.id, (o.total_cents / (SELECT count(*) FROM order_items i WHERE i.order_id = o.id))::int AS per_item
             FROM orders o WHERE o.id = ANY($1)"""
[keys]
"public.orders" = { column = "id" }
"public.order_items" = { column = "order_id" }
[[targets]]
sink = "pg"
table = "public.order_ratio"
[[targets]]
sink = "cache"
key = "ratio:{id}"
"#,
        )],
        1,
    );
    env.sql(
        "INSERT INTO customers VALUES ('00000000-0000-0000-0000-00000000000c', 'c', 'c@x');
         INSERT INTO products VALUES ('00000000-0000-0000-0000-00000000000f', 'p', 1);
         INSERT INTO orders (id, customer_id, total_cents)
              SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid,
                     '00000000-0000-0000-0000-00000000000c', 100 * g
                FROM generate_series(1, 8) g;
         INSERT INTO order_items (order_id, product_id, quantity, unit_cents)
              SELECT id, '00000000-0000-0000-0000-00000000000f', 1, 1 FROM orders
               WHERE id <> '00000000-0000-0000-0000-000000000005';",
    );
    // About changes from the stream (the rows were written after the slot was created):
    // a backfill would find the failing key first, at the backfill's position.
    cfg.backfill.initial = false;
    let (mut projector, _) = env.run(&cfg, 0).await;
    let client = env.client().await;
    let letters = dead_letter::list(&client, "test", &Selection::default())
        .await
        .unwrap();
    // The two targets flush concurrently: their letters come in either order.
    let mut keys: Vec<(&str, &str, &str)> = letters
        .iter()
        .map(|l| (l.target.as_str(), l.key.as_str(), l.status.as_str()))
        .collect();
    keys.sort();
    let five = r#"["00000000-0000-0000-0000-000000000005"]"#;
    assert_eq!(
        keys,
        [
            ("ratio.cache", five, "failed"),
            ("ratio.pg", five, "failed")
        ],
        "{letters:#?}"
    );
    assert!(
        letters
            .iter()
            .all(|l| l.sqlstate.as_deref() == Some("22012"))
    );
    assert_eq!(
        env.rows("SELECT count(*) FROM order_ratio").await,
        [["7".to_owned()]]
    );

    // A later change of the key waits behind its dead letter; after `dlq retry` the key
    // is recomputed from the current state.
    env.sql(
        "INSERT INTO order_items (order_id, product_id, quantity, unit_cents)
         VALUES ('00000000-0000-0000-0000-000000000005', '00000000-0000-0000-0000-00000000000f', 1, 1)",
    );
    env.run_with(&mut projector, 0).await;
    assert_eq!(
        env.rows("SELECT count(*) FROM order_ratio").await,
        [["7".to_owned()]]
    );
    dead_letter::request(&client, "test", &Selection::default(), Action::Retry)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !dead_letter::list(&client, "test", &Selection::default())
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "the retry happened");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        env.run_with(&mut projector, 0).await;
    }
    assert_eq!(
        env.rows("SELECT per_item::text FROM order_ratio WHERE id = '00000000-0000-0000-0000-000000000005'")
            .await,
        [["500".to_owned()]]
    );
    let mut conn = env.redis().await;
    let per_item: Option<String> = redis::cmd("HGET")
        .arg("ratio:00000000-0000-0000-0000-000000000005")
        .arg("per_item")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(per_item.as_deref(), Some("500"));
}

/// Postgres can hand a commit to logical decoding before other sessions see the
/// transaction (its commit record is flushed before it leaves the proc array). Here that
/// moment is stretched on purpose: the writer waits for a synchronous standby that does
/// not exist, after its commit is already decoded, until it is cancelled. A recompute
/// that read the source meanwhile would project the old state, and nothing would ever
/// correct it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recompute_waits_until_the_decoded_transaction_is_visible() {
    let pg = pgprism_testkit::PgServer::builder()
        .setting("synchronous_standby_names", "ghost")
        .setting("synchronous_commit", "local")
        .start()
        .unwrap();
    let env = Env::with_servers(
        &format!("{SCHEMA}\n{READ_MODELS}"),
        pg,
        pgprism_testkit::RedisServer::start().unwrap(),
    );
    let cfg = env.config(vec![projection(&order_read_model_toml())], 1);
    env.sql(
        "INSERT INTO customers VALUES ('00000000-0000-0000-0000-00000000000c', 'c', 'c@x');
         INSERT INTO orders (id, customer_id) VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-00000000000c');",
    );
    let (mut projector, _) = env.run(&cfg, 0).await;
    assert_eq!(
        env.rows("SELECT status FROM order_read_model").await,
        [["pending".to_owned()]]
    );

    // The writer's commit is decodable at once but stays invisible until it is cancelled.
    let writer = env.client().await;
    let writer_pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let started = std::time::Instant::now();
    let update = tokio::spawn(async move {
        writer
            .batch_execute(
                "SET synchronous_commit = on;
                 UPDATE orders SET status = 'confirmed' WHERE id = '00000000-0000-0000-0000-000000000001'",
            )
            .await
    });
    let admin = env.client().await;
    let wait_event = move |admin: tokio_postgres::Client| async move {
        let row = admin
            .query_opt(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = $1",
                &[&writer_pid],
            )
            .await
            .unwrap();
        (admin, row.and_then(|r| r.get::<_, Option<String>>(0)))
    };
    // The precondition: the update is committed locally and waits for the standby (its
    // commit is in the WAL, so decodable, but not yet visible to other sessions).
    let mut admin = admin;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (a, event) = wait_event(admin).await;
        admin = a;
        if event.as_deref() == Some("SyncRep") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the update never waited for synchronous replication (wait_event {event:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        // Still waiting when cancelled: the pipeline below ran while it was invisible.
        let (admin, event) = wait_event(admin).await;
        assert_eq!(
            event.as_deref(),
            Some("SyncRep"),
            "the update stopped waiting before it was cancelled"
        );
        admin
            .execute("SELECT pg_cancel_backend($1)", &[&writer_pid])
            .await
            .unwrap();
    });
    // Decoded while invisible: the pipeline must not project 'pending' and move on.
    let until: pgprism_decoder::Lsn = env
        .sql("SELECT pg_current_wal_insert_lsn()")
        .trim()
        .parse()
        .unwrap();
    let mut until = until;
    until.0 += 1;
    env.run_until(&mut projector, 0, until).await;
    cancel.await.unwrap();
    update
        .await
        .unwrap()
        .expect("a cancelled wait for the standby keeps the local commit");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "the update waited {:?}, less than until its cancel",
        started.elapsed()
    );
    assert_eq!(
        env.rows("SELECT status FROM orders").await,
        [["confirmed".to_owned()]],
        "the update committed locally"
    );
    env.run_with(&mut projector, 0).await;
    assert_same(
        &env.rows(MODEL).await,
        &env.rows(TRUTH).await,
        "order_read_model after an invisible-at-decode transaction",
    );
}
