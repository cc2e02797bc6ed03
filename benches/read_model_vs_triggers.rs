//! `order_read_model` maintenance: pgprism's query projection against the seed's approach
//! (triggers + an events table + polling consumers), measured in the same run on the same
//! Postgres server, over the same workload.
//!
//! - **triggers** (the baseline): row triggers on `orders`, `order_items`, `customers` and
//!   `products` write the ids of the affected orders into `order_events` (a customer →
//!   all its orders; a product → every order containing it; an item → its old and new
//!   order). `PGPRISM_BENCH_CONSUMERS` consumers (default 8: on this 2-core machine 2 → 4
//!   → 8 consumers each drained faster, 16 no faster than 8) each loop:
//!   `BEGIN; SELECT … FROM order_events ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1`;
//!   recompute that one order with the ground-truth view `order_read_model_truth`
//!   (one statement: `INSERT … ON CONFLICT DO UPDATE`, or `DELETE` when the order is gone);
//!   `DELETE` the event; `COMMIT` — prepared statements, until the table is empty.
//! - **triggers, batched** (a stronger baseline): the same triggers; each consumer claims
//!   up to [`BATCH_CLAIM`] events at once (`DELETE … WHERE id IN (SELECT … FOR UPDATE SKIP
//!   LOCKED LIMIT 100) RETURNING order_id`) and recomputes each distinct order once, in one
//!   statement, in the claim's transaction (a deadlock between two consumers' overlapping
//!   orders is retried).
//! - **pgprism**: the `order_read_model` query projection of the sink tests (Postgres
//!   target only, default batch settings) driven from a replication slot with `drive`,
//!   until everything committed before a marker LSN is durable in the target.
//!
//! Each round builds three fresh databases on the server, one per contender, and writes the
//! same deterministic workload into each (a shop workload like `pgprism_testkit::shop`,
//! with ids drawn from the seed so both databases get identical rows and change counts):
//! first the trigger database (its events pile up), then the pgprism database (its slot,
//! created just before, holds the changes). Then each contender catches up on its own
//! backlog while the others are idle — one after the other, the order rotating per round —
//! so none competes with another for the two cores. Measured: source changes
//! (inserted, updated, deleted rows, cascades included) per second from "workload
//! committed" to "read model caught up" (pgprism: its stream opens, `drive` reaches the
//! marker; triggers: the consumers start, the events table is empty). Both read models must
//! then equal `order_read_model_truth` row for row, or the bench fails.
//!
//! `PGPRISM_BENCH_SCALE=0.1` runs a tenth of the transactions, `PGPRISM_BENCH_ROUNDS` sets
//! the rounds (default 3). Reported: each round's ratio of catch-up times, pgprism paired
//! with each baseline of the same round (the machine's speed drifts between rounds, not
//! within one), and their median.
//!
//! Run: `cargo bench -p pgprism-sink --bench read_model_vs_triggers`

mod common;

use pgprism_testkit::shop::order_read_model_projection;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{ReplicationStream, StreamConfig};
use pgprism_leader::Epoch;
use pgprism_pg::Dsn;
use pgprism_sink::drive::{DriveOptions, drive};
use pgprism_sink::spec::{BatchSpec, ProjectionSpec, SinkSpec};
use pgprism_sink::{FlushReport, Projector, ProjectorConfig};
use pgprism_testkit::PgServer;
use rand::{Rng, SeedableRng};
use tokio::sync::{Barrier, watch};

const SCHEMA: &str = include_str!("../sql/schema.sql");
const READ_MODELS: &str = include_str!("../sql/read_models.sql");

/// Workload transactions at scale 1.0.
const TRANSACTIONS: usize = 20_000;
/// The workload's seed.
const SEED: u64 = 7;
/// Workload transactions sent per round trip while loading (each keeps its own
/// BEGIN/COMMIT).
const TXNS_PER_SEND: usize = 50;

/// The seed's change capture: row triggers writing affected order ids into an events table.
const TRIGGERS: &str = r#"
CREATE TABLE order_events (id bigserial PRIMARY KEY, order_id uuid NOT NULL);

CREATE FUNCTION order_events_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO order_events (order_id) VALUES (OLD.id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.id <> OLD.id) THEN
        INSERT INTO order_events (order_id) VALUES (NEW.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER order_events AFTER INSERT OR UPDATE OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION order_events_orders();

CREATE FUNCTION order_events_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO order_events (order_id) VALUES (OLD.order_id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.order_id <> OLD.order_id) THEN
        INSERT INTO order_events (order_id) VALUES (NEW.order_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER order_events AFTER INSERT OR UPDATE OR DELETE ON order_items
    FOR EACH ROW EXECUTE FUNCTION order_events_items();

CREATE FUNCTION order_events_customers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_events (order_id)
        SELECT id FROM orders
         WHERE customer_id IN (CASE WHEN TG_OP <> 'DELETE' THEN NEW.id END,
                               CASE WHEN TG_OP <> 'INSERT' THEN OLD.id END);
    RETURN NULL;
END $$;
CREATE TRIGGER order_events AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION order_events_customers();

CREATE FUNCTION order_events_products() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_events (order_id)
        SELECT DISTINCT order_id FROM order_items
         WHERE product_id IN (CASE WHEN TG_OP <> 'DELETE' THEN NEW.id END,
                              CASE WHEN TG_OP <> 'INSERT' THEN OLD.id END);
    RETURN NULL;
END $$;
CREATE TRIGGER order_events AFTER INSERT OR UPDATE OR DELETE ON products
    FOR EACH ROW EXECUTE FUNCTION order_events_products();
"#;

/// The consumer's claim of the oldest free event.
const CLAIM: &str =
    "SELECT id, order_id::text FROM order_events ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1";
/// Recompute one order from the ground truth: upsert it, or delete it when it is gone.
const RECOMPUTE: &str = "
WITH up AS (
    INSERT INTO order_read_model
    SELECT * FROM order_read_model_truth WHERE id = $1::text::uuid
    ON CONFLICT (id) DO UPDATE SET
        customer_name = EXCLUDED.customer_name, customer_email = EXCLUDED.customer_email,
        status = EXCLUDED.status, item_count = EXCLUDED.item_count,
        total_cents = EXCLUDED.total_cents, first_item_name = EXCLUDED.first_item_name,
        created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at
    RETURNING id)
DELETE FROM order_read_model WHERE id = $1::text::uuid AND NOT EXISTS (SELECT 1 FROM up)";
/// The processed event goes.
const DONE: &str = "DELETE FROM order_events WHERE id = $1";
/// Events a batched consumer claims at once.
const BATCH_CLAIM: usize = 100;
/// The batched consumer's claim: up to [`BATCH_CLAIM`] free events, removed at once (the
/// transaction's rollback puts them back).
const CLAIM_MANY: &str = "DELETE FROM order_events WHERE id IN
    (SELECT id FROM order_events ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 100)
    RETURNING order_id::text";
/// Recompute many orders from the ground truth in one statement (in id order, so two
/// consumers lock shared rows in the same order). `= ANY(array)` is pushed down into the
/// view's grouping (an `IN (SELECT …)` semi-join would aggregate the whole view).
const RECOMPUTE_MANY: &str = "
WITH up AS (
    INSERT INTO order_read_model
    SELECT t.* FROM order_read_model_truth t WHERE t.id = ANY($1::text[]::uuid[]) ORDER BY t.id
    ON CONFLICT (id) DO UPDATE SET
        customer_name = EXCLUDED.customer_name, customer_email = EXCLUDED.customer_email,
        status = EXCLUDED.status, item_count = EXCLUDED.item_count,
        total_cents = EXCLUDED.total_cents, first_item_name = EXCLUDED.first_item_name,
        created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at
    RETURNING id)
DELETE FROM order_read_model
 WHERE id = ANY($1::text[]::uuid[]) AND id NOT IN (SELECT id FROM up)";

/// Rows of the read model that differ from the ground truth (both directions), and the
/// number of orders.
const CHECK: &str = "
SELECT (SELECT count(*) FROM ((TABLE order_read_model EXCEPT TABLE order_read_model_truth)
                              UNION ALL
                              (TABLE order_read_model_truth EXCEPT TABLE order_read_model)) d)
       || ' ' || (SELECT count(*) FROM order_read_model_truth)";

/// The workload as SQL, ready to send, and what it amounts to.
struct Workload {
    /// Scripts of up to [`TXNS_PER_SEND`] transactions each.
    scripts: Vec<String>,
    /// Row changes it makes (cascaded deletes of items included).
    changes: u64,
}

/// A UUID from the seed.
fn uuid(rng: &mut rand::rngs::StdRng) -> String {
    let v: u128 = rng.random();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        v >> 96,
        (v >> 80) & 0xffff,
        (v >> 64) & 0xffff,
        (v >> 48) & 0xffff,
        v & 0xffff_ffff_ffff
    )
}

impl Workload {
    /// The shop workload of the sink tests (`txns` transactions of 1–3 operations over all
    /// four tables: inserts, status changes, item moves and deletes, customer and product
    /// renames, order deletes), with every id and choice drawn from `seed`: the same SQL
    /// for every database. An in-memory model follows the rows (cascades included).
    fn generate(txns: usize, seed: u64) -> Workload {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut customers: Vec<String> = Vec::new();
        let mut products: Vec<String> = Vec::new();
        let mut orders: Vec<String> = Vec::new();
        // (item id, order id)
        let mut items: Vec<(String, String)> = Vec::new();
        let mut changes = 0u64;
        let mut txn = String::from("BEGIN;\n");
        for c in 0..5 {
            let id = uuid(&mut rng);
            txn.push_str(&format!(
                "INSERT INTO customers VALUES ('{id}', 'customer {c}', 'c{c}@example.com');\n"
            ));
            customers.push(id);
        }
        for p in 0..5 {
            let id = uuid(&mut rng);
            txn.push_str(&format!(
                "INSERT INTO products VALUES ('{id}', 'product {p}', {});\n",
                100 + p
            ));
            products.push(id);
        }
        changes += 10;
        txn.push_str("COMMIT;\n");
        let mut scripts = vec![txn];
        let mut script = String::new();
        for t in 0..txns {
            script.push_str("BEGIN;\n");
            for _ in 0..rng.random_range(1..=3) {
                let pick = |v: &[String], rng: &mut rand::rngs::StdRng| {
                    v[rng.random_range(0..v.len())].clone()
                };
                let item = |order: &str, rng: &mut rand::rngs::StdRng, products: &[String]| {
                    let id = uuid(rng);
                    let sql = format!(
                        "INSERT INTO order_items VALUES ('{id}', '{order}', '{}', {}, {});\n",
                        pick(products, rng),
                        rng.random_range(1..5i32),
                        rng.random_range(0..5_000i32)
                    );
                    (id, sql)
                };
                match rng.random_range(0..100) {
                    0..=4 => {
                        let id = uuid(&mut rng);
                        script.push_str(&format!(
                            "INSERT INTO customers VALUES ('{id}', 'customer t{t}', 't{t}@example.com');\n"
                        ));
                        customers.push(id);
                        changes += 1;
                    }
                    5..=9 => {
                        let id = uuid(&mut rng);
                        script.push_str(&format!(
                            "INSERT INTO products VALUES ('{id}', 'product t{t}', {});\n",
                            rng.random_range(1..10_000i32)
                        ));
                        products.push(id);
                        changes += 1;
                    }
                    10..=29 => {
                        let id = uuid(&mut rng);
                        script.push_str(&format!(
                            "INSERT INTO orders (id, customer_id) VALUES ('{id}', '{}');\n",
                            pick(&customers, &mut rng)
                        ));
                        changes += 1;
                        for _ in 0..rng.random_range(0..4) {
                            let (item_id, sql) = item(&id, &mut rng, &products);
                            script.push_str(&sql);
                            items.push((item_id, id.clone()));
                            changes += 1;
                        }
                        orders.push(id);
                    }
                    30..=39 if !orders.is_empty() => {
                        let status = ["pending", "confirmed", "shipped", "cancelled"]
                            [rng.random_range(0..4)];
                        script.push_str(&format!(
                            "UPDATE orders SET status = '{status}', updated_at = now() WHERE id = '{}';\n",
                            pick(&orders, &mut rng)
                        ));
                        changes += 1;
                    }
                    40..=49 if !orders.is_empty() => {
                        let order = pick(&orders, &mut rng);
                        let (item_id, sql) = item(&order, &mut rng, &products);
                        script.push_str(&sql);
                        items.push((item_id, order));
                        changes += 1;
                    }
                    50..=57 if !items.is_empty() => {
                        let (id, _) = items.swap_remove(rng.random_range(0..items.len()));
                        script.push_str(&format!("DELETE FROM order_items WHERE id = '{id}';\n"));
                        changes += 1;
                    }
                    58..=65 if !items.is_empty() => {
                        let (id, _) = &items[rng.random_range(0..items.len())];
                        script.push_str(&format!(
                            "UPDATE order_items SET quantity = quantity + 1 WHERE id = '{id}';\n"
                        ));
                        changes += 1;
                    }
                    66..=71 if !items.is_empty() && !orders.is_empty() => {
                        // Move an item to another order: both orders change.
                        let i = rng.random_range(0..items.len());
                        let order = pick(&orders, &mut rng);
                        script.push_str(&format!(
                            "UPDATE order_items SET order_id = '{order}' WHERE id = '{}';\n",
                            items[i].0
                        ));
                        items[i].1 = order;
                        changes += 1;
                    }
                    72..=79 => {
                        script.push_str(&format!(
                            "UPDATE customers SET name = name || '+', email = 'e{t}@example.com' WHERE id = '{}';\n",
                            pick(&customers, &mut rng)
                        ));
                        changes += 1;
                    }
                    80..=89 => {
                        script.push_str(&format!(
                            "UPDATE products SET name = name || '*' WHERE id = '{}';\n",
                            pick(&products, &mut rng)
                        ));
                        changes += 1;
                    }
                    90..=99 if !orders.is_empty() => {
                        // Its items go with it (ON DELETE CASCADE).
                        let id = orders.swap_remove(rng.random_range(0..orders.len()));
                        script.push_str(&format!("DELETE FROM orders WHERE id = '{id}';\n"));
                        let before = items.len();
                        items.retain(|(_, o)| *o != id);
                        changes += 1 + (before - items.len()) as u64;
                    }
                    _ => {}
                }
            }
            script.push_str("COMMIT;\n");
            if (t + 1) % TXNS_PER_SEND == 0 || t + 1 == txns {
                scripts.push(std::mem::take(&mut script));
            }
        }
        Workload { scripts, changes }
    }

    /// Write the workload into `db`; returns how long it took.
    async fn apply(&self, pg: &PgServer, db: &str) -> Duration {
        let client = pg.client(db).await.expect("client");
        let t = Instant::now();
        for s in &self.scripts {
            client.batch_execute(s).await.expect("workload");
        }
        t.elapsed()
    }
}

/// One round's numbers for one contender.
#[derive(Debug, Clone, Copy)]
struct Run {
    catch_up: Duration,
    /// Writing the workload into this contender's database.
    write: Duration,
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
    let consumers =
        common::env_number("PGPRISM_BENCH_CONSUMERS").map_or(8, |c| (c as usize).max(1));
    let txns = ((TRANSACTIONS as f64 * scale) as usize).max(100);
    let workload = Workload::generate(txns, SEED);
    println!(
        "order_read_model: pgprism vs triggers — {txns} transactions, {} row changes, \
         {rounds} rounds, scale {scale}, {consumers} trigger consumers, Postgres {}",
        workload.changes,
        pg.psql("postgres", "SHOW server_version").unwrap().trim()
    );

    let mut triggers: Vec<Run> = Vec::new();
    let mut batched: Vec<Run> = Vec::new();
    let mut pgprism: Vec<Run> = Vec::new();
    let mut events = 0u64;
    for r in 0..rounds {
        // The trigger database first, then the pgprism one with its slot created just
        // before its workload: the slot's backlog is that workload alone.
        let (trig_db, _) = pg.fresh_database().unwrap();
        pg.psql(&trig_db, &format!("{SCHEMA}\n{READ_MODELS}\n{TRIGGERS}"))
            .unwrap();
        let trig_write = rt.block_on(workload.apply(&pg, &trig_db));
        let (batch_db, _) = pg.fresh_database().unwrap();
        pg.psql(&batch_db, &format!("{SCHEMA}\n{READ_MODELS}\n{TRIGGERS}"))
            .unwrap();
        let batch_write = rt.block_on(workload.apply(&pg, &batch_db));
        let (prism_db, prism_dsn) = pg.fresh_database().unwrap();
        pg.psql(
            &prism_db,
            &format!(
                "{SCHEMA}\n{READ_MODELS}
                 CREATE PUBLICATION pgprism FOR TABLE customers, products, orders, order_items;
                 SELECT pg_create_logical_replication_slot('pgprism', 'pgoutput');"
            ),
        )
        .unwrap();
        let prism_write = rt.block_on(workload.apply(&pg, &prism_db));
        let marker: Lsn = pg
            .psql(
                &prism_db,
                "SELECT pg_logical_emit_message(true, 'pgprism-bench', 'mark')",
            )
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for db in [&trig_db, &batch_db, &prism_db] {
            pg.psql(db, "ANALYZE").unwrap();
        }
        let backlog: u64 = pg
            .psql(&trig_db, "SELECT count(*) FROM order_events")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        events = backlog;

        for k in 0..3 {
            pg.psql("postgres", "CHECKPOINT").unwrap();
            let turn = (k + r) % 3;
            if turn == 2 {
                let took = rt.block_on(run_triggers_batched(&pg, &batch_db, consumers));
                let left = pg
                    .psql(&batch_db, "SELECT count(*) FROM order_events")
                    .unwrap();
                assert_eq!(left.trim(), "0", "the events table is empty");
                println!(
                    "round {r}: batched   {:>8.2?}  {:>8.0} changes/s  ({backlog} events, {consumers} consumers claiming up to {BATCH_CLAIM}; workload written in {batch_write:.2?})",
                    took,
                    workload.changes as f64 / took.as_secs_f64()
                );
                batched.push(Run {
                    catch_up: took,
                    write: batch_write,
                });
            } else if turn == 0 {
                let took = rt.block_on(run_triggers(&pg, &trig_db, consumers));
                let left = pg
                    .psql(&trig_db, "SELECT count(*) FROM order_events")
                    .unwrap();
                assert_eq!(left.trim(), "0", "the events table is empty");
                println!(
                    "round {r}: triggers  {:>8.2?}  {:>8.0} changes/s  ({backlog} events, {consumers} consumers; workload written in {trig_write:.2?})",
                    took,
                    workload.changes as f64 / took.as_secs_f64()
                );
                triggers.push(Run {
                    catch_up: took,
                    write: trig_write,
                });
            } else {
                let cfg = config(&prism_dsn);
                let (took, reports) = rt.block_on(run_pgprism(&cfg, &prism_dsn, marker));
                let changes: usize = reports.iter().map(|r| r.changes).sum();
                assert_eq!(
                    changes as u64, workload.changes,
                    "pgprism saw every change of the workload"
                );
                println!(
                    "round {r}: pgprism   {:>8.2?}  {:>8.0} changes/s  ({} flushes, {} rows written; workload written in {prism_write:.2?})",
                    took,
                    workload.changes as f64 / took.as_secs_f64(),
                    reports.len(),
                    reports.iter().map(|r| r.written).sum::<u64>()
                );
                pgprism.push(Run {
                    catch_up: took,
                    write: prism_write,
                });
            }
        }
        for (what, db) in [
            ("triggers", &trig_db),
            ("batched triggers", &batch_db),
            ("pgprism", &prism_db),
        ] {
            let check = pg.psql(db, CHECK).unwrap();
            let (diff, orders) = check.trim().split_once(' ').unwrap();
            assert!(
                diff == "0" && orders != "0",
                "{what}: order_read_model differs from order_read_model_truth in {diff} rows ({orders} orders)"
            );
        }
        pg.psql(&prism_db, "SELECT pg_drop_replication_slot('pgprism')")
            .unwrap();
        for db in [&trig_db, &batch_db, &prism_db] {
            pg.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"))
                .unwrap();
        }
    }

    let median = |runs: &[Run], f: fn(&Run) -> Duration| {
        let mut v: Vec<Duration> = runs.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let rate = |d: Duration| workload.changes as f64 / d.as_secs_f64();
    println!(
        "\n| contender | median catch-up | changes/s | all rounds | workload write (median) |"
    );
    println!("|---|---|---|---|---|");
    for (label, runs) in [
        (format!("triggers + {consumers} consumers"), &triggers),
        (
            format!("triggers + {consumers} consumers claiming up to {BATCH_CLAIM}"),
            &batched,
        ),
        ("pgprism query projection".to_owned(), &pgprism),
    ] {
        let m = median(runs, |r| r.catch_up);
        println!(
            "| {label} | {m:.2?} | {:.0} | {:?} | {:.2?} |",
            rate(m),
            runs.iter()
                .map(|r| format!("{:.2?}", r.catch_up))
                .collect::<Vec<_>>(),
            median(runs, |r| r.write)
        );
    }
    // Paired per round: each round's baseline over the same round's pgprism.
    let pgprism_times: Vec<Duration> = pgprism.iter().map(|r| r.catch_up).collect();
    for (label, runs) in [("triggers", &triggers), ("batched triggers", &batched)] {
        let theirs: Vec<Duration> = runs.iter().map(|r| r.catch_up).collect();
        println!(
            "ratio vs {label} (pgprism changes/s ÷ {label} changes/s), paired per round: {}",
            common::paired(&theirs, &pgprism_times)
        );
    }
    println!(
        "{} source changes, {events} trigger events",
        workload.changes
    );
}

/// Drain the events table with `n` consumers of one event each; timed from their start
/// (connected and prepared) until the last one found nothing left.
async fn run_triggers(pg: &PgServer, db: &str, n: usize) -> Duration {
    drain(pg, db, n, |client, start| async move {
        let claim = client.prepare(CLAIM).await.unwrap();
        let recompute = client.prepare(RECOMPUTE).await.unwrap();
        let done = client.prepare(DONE).await.unwrap();
        start.wait().await;
        let mut processed = 0u64;
        loop {
            client.batch_execute("BEGIN").await.unwrap();
            let rows = client.query(&claim, &[]).await.unwrap();
            let Some(row) = rows.first() else {
                client.batch_execute("COMMIT").await.unwrap();
                return processed;
            };
            let (id, order): (i64, String) = (row.get(0), row.get(1));
            client.execute(&recompute, &[&order]).await.unwrap();
            client.execute(&done, &[&id]).await.unwrap();
            client.batch_execute("COMMIT").await.unwrap();
            processed += 1;
        }
    })
    .await
}

/// Drain the events table with `n` batched consumers: each claims up to [`BATCH_CLAIM`]
/// events and recomputes their distinct orders in one statement, in one transaction.
async fn run_triggers_batched(pg: &PgServer, db: &str, n: usize) -> Duration {
    drain(pg, db, n, |client, start| async move {
        let claim = client.prepare(CLAIM_MANY).await.unwrap();
        let recompute = client.prepare(RECOMPUTE_MANY).await.unwrap();
        start.wait().await;
        let mut processed = 0u64;
        loop {
            client.batch_execute("BEGIN").await.unwrap();
            let attempt = async {
                let rows = client.query(&claim, &[]).await?;
                let mut orders: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                orders.sort();
                orders.dedup();
                if !orders.is_empty() {
                    client.execute(&recompute, &[&orders]).await?;
                }
                client.batch_execute("COMMIT").await?;
                Ok::<usize, tokio_postgres::Error>(rows.len())
            }
            .await;
            match attempt {
                Ok(0) => return processed,
                Ok(claimed) => processed += claimed as u64,
                // Two consumers' overlapping orders: roll back (the events return) and
                // claim again.
                Err(e)
                    if e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
                {
                    client.batch_execute("ROLLBACK").await.unwrap();
                }
                Err(e) => panic!("batched consumer: {e}"),
            }
        }
    })
    .await
}

/// `n` consumers on their own sessions, each given its session and a barrier to wait on
/// once prepared; timed from the barrier until every consumer returned.
async fn drain<C, F>(pg: &PgServer, db: &str, n: usize, consumer: C) -> Duration
where
    C: Fn(tokio_postgres::Client, Arc<Barrier>) -> F,
    F: Future<Output = u64> + Send + 'static,
{
    let start = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = pg.client(db).await.expect("client");
        tasks.push(tokio::spawn(consumer(client, start.clone())));
    }
    start.wait().await;
    let t = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    t.elapsed()
}

/// The projection of the sink tests, Postgres target only.
fn config(dsn: &str) -> ProjectorConfig {
    let toml_text = order_read_model_projection(
        r#"[[targets]]
sink = "pg"
table = "public.order_read_model"
"#,
    );
    let projection: ProjectionSpec = toml::from_str(&toml_text).expect("projection TOML");
    ProjectorConfig {
        pipeline: "bench".to_owned(),
        lock_key: pgprism_leader::lock_key("bench"),
        epoch: Epoch(1),
        source: Dsn::parse(dsn).unwrap(),
        sinks: BTreeMap::from([(
            "pg".to_owned(),
            SinkSpec::postgres(Dsn::parse(dsn).unwrap()),
        )]),
        projections: vec![projection],
        batch: BatchSpec::default(),
        takeover_after: Duration::from_secs(5),
        // Measures the stream: nothing exists before the first start to load.
        backfill: pgprism_sink::spec::BackfillSpec {
            initial: false,
            ..Default::default()
        },
    }
}

/// Start a projector (not timed), then time opening the stream and driving it until
/// everything before `until` is durable in the read model.
async fn run_pgprism(cfg: &ProjectorConfig, dsn: &str, until: Lsn) -> (Duration, Vec<FlushReport>) {
    let mut projector = Projector::start(cfg).await.expect("projector starts");
    let (_stop_tx, mut stop) = watch::channel(false);
    let opts = DriveOptions {
        replay_window: 0,
        until: Some(until),
    };
    let mut reports = Vec::new();
    let t = Instant::now();
    let mut stream_cfg = StreamConfig::new(Dsn::parse(dsn).unwrap(), "pgprism", "pgprism");
    stream_cfg.start_lsn = projector.resume_lsn();
    let mut stream = ReplicationStream::open(stream_cfg).await.expect("stream");
    tokio::time::timeout(
        Duration::from_secs(600),
        drive(&mut projector, &mut stream, &mut stop, &opts, |r| {
            reports.push(r.clone())
        }),
    )
    .await
    .expect("pgprism caught up within 600 s")
    .expect("drive");
    let took = t.elapsed();
    stream.shutdown(Duration::from_secs(5)).await.ok();
    (took, reports)
}
