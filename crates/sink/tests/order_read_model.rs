//! The seed example end to end: `order_read_model` kept by a query projection from a real
//! replication slot, in Postgres and in Redis, equal to the ground truth after a
//! randomized workload over all four tables — and unchanged by redelivery.

mod common;

use std::collections::HashMap;

use common::{
    Env, READ_MODELS, SCHEMA, assert_same, order_read_model_toml, projection, shop_workload,
};
use pgprism_leader::Offset;

/// The ground truth as text, in the form the pipeline writes (session TimeZone UTC).
const TRUTH: &str = "SELECT id::text, customer_name, customer_email, status, item_count::text,
        total_cents::text, first_item_name, created_at::text, updated_at::text
   FROM order_read_model_truth";
const MODEL: &str = "SELECT id::text, customer_name, customer_email, status, item_count::text,
        total_cents::text, first_item_name, created_at::text, updated_at::text
   FROM order_read_model";
const COLUMNS: [&str; 9] = [
    "id",
    "customer_name",
    "customer_email",
    "status",
    "item_count",
    "total_cents",
    "first_item_name",
    "created_at",
    "updated_at",
];

/// Every Redis hash `order:*`, as rows in the column order above.
async fn redis_rows(env: &Env) -> Vec<Vec<String>> {
    let mut conn = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("order:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for k in keys {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            Some(&k[6..]),
            h.get("id").map(String::as_str),
            "key {k} holds its id"
        );
        rows.push(
            COLUMNS
                .iter()
                .map(|c| h.get(*c).cloned().unwrap_or_else(|| "∅".to_owned()))
                .collect(),
        );
    }
    rows.sort();
    rows
}

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
    let truth = env.rows(TRUTH).await;
    assert!(
        truth.len() > 100,
        "the workload leaves orders: {}",
        truth.len()
    );
    assert_same(
        &env.rows(MODEL).await,
        &truth,
        "order_read_model vs the ground truth",
    );
    assert_same(
        &redis_rows(&env).await,
        &truth,
        "Redis hashes vs the ground truth",
    );
    let written: u64 = reports.iter().map(|r| r.written).sum();
    assert!(written > 0 && reports.iter().all(|r| r.dead_letters == 0));
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
    assert_same(&redis_rows(&env).await, &truth, "Redis after more changes");
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
    assert_same(&redis_rows(&env).await, &truth, "Redis after redelivery");
}
