//! The demo's write side: the testkit's shop workload (`pgprism_testkit::shop`) — the
//! same mix of inserts, updates and deletes over customers, products, orders and order
//! items, 1–3 operations per transaction — at a steady rate instead of flat out, with
//! readable names, and with every committed order timed until it shows up in
//! `order_read_model`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

const FIRST: [&str; 16] = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Ken",
    "Margaret",
    "Linus",
    "Radia",
    "Leslie",
    "Frances",
    "John",
    "Hedy",
    "Tim",
    "Katherine",
];
const LAST: [&str; 16] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Thompson",
    "Hamilton",
    "Torvalds",
    "Perlman",
    "Lamport",
    "Allen",
    "Backus",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
];
const PRODUCTS: [&str; 20] = [
    "espresso beans 1 kg",
    "pour-over kettle",
    "ceramic mug",
    "oat milk 6-pack",
    "burr grinder",
    "travel tumbler",
    "paper filters 100",
    "french press",
    "matcha tin",
    "cold brew jar",
    "tea sampler",
    "digital scale",
    "milk frother",
    "biscotti box",
    "cocoa 500 g",
    "chai syrup",
    "moka pot",
    "cup warmer",
    "gift card",
    "descaler",
];
const EDITIONS: [&str; 5] = ["new", "2nd edition", "limited", "refill", "bundle"];

/// What the workload has done and what the read side has shown of it, shared between the
/// workload, the read-model watcher and the timeline.
#[derive(Debug, Default)]
pub struct Progress {
    /// Transactions committed.
    pub txns: u64,
    /// Rows the workload inserted, updated or deleted (cascades not counted).
    pub changes: u64,
    /// Orders inserted.
    pub orders: u64,
    /// Committed orders not yet seen in `order_read_model`, with their commit instant.
    pub pending: HashMap<String, Instant>,
    /// For each order seen: when (since the start) and how long after its commit.
    pub seen: Vec<(Duration, Duration)>,
    /// Orders deleted again before the watcher saw them (not timed).
    pub vanished: u64,
}

impl Progress {
    /// Committed orders the read model has not shown yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Shared progress.
pub type Shared = Arc<Mutex<Progress>>;

/// A small deterministic PRNG (SplitMix64): the demo needs no cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    fn name(&mut self) -> (String, String) {
        let (f, l) = (*self.pick(&FIRST), *self.pick(&LAST));
        let n = self.below(1000);
        (
            format!("{f} {l}"),
            format!("{}.{}{n}@example.com", f.to_lowercase(), l.to_lowercase()),
        )
    }
}

/// The rows the workload knows about.
#[derive(Default)]
struct World {
    customers: Vec<String>,
    /// (id, catalogue name, price in cents)
    products: Vec<(String, &'static str, i32)>,
    orders: Vec<String>,
    items: Vec<String>,
}

/// Commit `rate` transactions a second until `until`.
pub async fn drive(
    mut client: Client,
    rate: f64,
    until: Instant,
    seed: u64,
    progress: Shared,
) -> Result<(), tokio_postgres::Error> {
    let mut rng = Rng(seed);
    let mut w = World::default();
    {
        // A small shop to start with, in one transaction.
        let tx = client.transaction().await?;
        let mut changes = 0;
        for _ in 0..20 {
            let (name, email) = rng.name();
            w.customers.push(insert_customer(&tx, &name, &email).await?);
            changes += 1;
        }
        for name in PRODUCTS.iter().take(12) {
            let price = 199 + 50 * rng.below(100) as i32;
            let id = one(
                &tx,
                "INSERT INTO products (name, price_cents) VALUES ($1, $2) RETURNING id::text",
                &[name, &price],
            )
            .await?;
            w.products.push((id, name, price));
            changes += 1;
        }
        tx.commit().await?;
        progress.lock().unwrap().changes += changes;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Steady: a late transaction is not followed by a burst to catch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut t: u64 = 0;
    while Instant::now() < until {
        tick.tick().await;
        t += 1;
        let tx = client.transaction().await?;
        let mut new_orders: Vec<String> = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        let mut changes = 0u64;
        for _ in 0..1 + rng.below(3) {
            match rng.below(100) {
                0..=4 => {
                    let (name, email) = rng.name();
                    w.customers.push(insert_customer(&tx, &name, &email).await?);
                    changes += 1;
                }
                5..=9 => {
                    let name = *rng.pick(&PRODUCTS);
                    let price = 199 + 50 * rng.below(100) as i32;
                    let id = one(&tx, "INSERT INTO products (name, price_cents) VALUES ($1, $2) RETURNING id::text", &[&name, &price]).await?;
                    w.products.push((id, name, price));
                    changes += 1;
                }
                10..=29 => {
                    let customer = rng.pick(&w.customers).clone();
                    let o = one(&tx, "INSERT INTO orders (customer_id) VALUES ($1::text::uuid) RETURNING id::text", &[&customer]).await?;
                    changes += 1;
                    for _ in 0..rng.below(4) {
                        let (p, _, price) = rng.pick(&w.products).clone();
                        let qty = 1 + rng.below(4) as i32;
                        w.items.push(insert_item(&tx, &o, &p, qty, price).await?);
                        changes += 1;
                    }
                    w.orders.push(o.clone());
                    new_orders.push(o);
                }
                30..=39 if !w.orders.is_empty() => {
                    // pending → confirmed → shipped, and now and then a cancellation.
                    let cancel = rng.below(6) == 0;
                    let o = rng.pick(&w.orders).clone();
                    changes += tx
                        .execute(
                            "UPDATE orders SET status = CASE
                                    WHEN $2 AND status IN ('pending', 'confirmed') THEN 'cancelled'
                                    WHEN status = 'pending' THEN 'confirmed'
                                    WHEN status = 'confirmed' THEN 'shipped'
                                    ELSE status END,
                                updated_at = now()
                              WHERE id = $1::text::uuid",
                            &[&o, &cancel],
                        )
                        .await?;
                }
                40..=49 if !w.orders.is_empty() => {
                    let o = rng.pick(&w.orders).clone();
                    let (p, _, price) = rng.pick(&w.products).clone();
                    let qty = 1 + rng.below(4) as i32;
                    w.items.push(insert_item(&tx, &o, &p, qty, price).await?);
                    changes += 1;
                }
                50..=57 if !w.items.is_empty() => {
                    let i = rng.below(w.items.len());
                    let id = w.items.swap_remove(i);
                    changes += tx
                        .execute("DELETE FROM order_items WHERE id = $1::text::uuid", &[&id])
                        .await?;
                }
                58..=65 if !w.items.is_empty() => {
                    let i = rng.pick(&w.items).clone();
                    changes += tx
                        .execute(
                            "UPDATE order_items SET quantity = quantity + 1 WHERE id = $1::text::uuid",
                            &[&i],
                        )
                        .await?;
                }
                66..=71 if !w.items.is_empty() && !w.orders.is_empty() => {
                    // An item moved to another order: both orders change.
                    let (i, o) = (rng.pick(&w.items).clone(), rng.pick(&w.orders).clone());
                    changes += tx
                        .execute(
                            "UPDATE order_items SET order_id = $2::text::uuid WHERE id = $1::text::uuid",
                            &[&i, &o],
                        )
                        .await?;
                }
                72..=79 => {
                    // A customer corrects their name and email: every order of theirs changes.
                    let (name, email) = rng.name();
                    let c = rng.pick(&w.customers).clone();
                    changes += tx
                        .execute(
                            "UPDATE customers SET name = $2, email = $3 WHERE id = $1::text::uuid",
                            &[&c, &name, &email],
                        )
                        .await?;
                }
                80..=89 => {
                    // A product renamed: every order whose first item it is changes.
                    let (id, base, _) = rng.pick(&w.products).clone();
                    let name = format!("{base} ({})", rng.pick(&EDITIONS));
                    changes += tx
                        .execute(
                            "UPDATE products SET name = $2 WHERE id = $1::text::uuid",
                            &[&id, &name],
                        )
                        .await?;
                }
                90..=99 if !w.orders.is_empty() => {
                    let i = rng.below(w.orders.len());
                    let id = w.orders.swap_remove(i);
                    changes += tx
                        .execute("DELETE FROM orders WHERE id = $1::text::uuid", &[&id])
                        .await?;
                    gone.push(id);
                }
                _ => {}
            }
        }
        tx.commit().await?;
        let committed = Instant::now();
        {
            let mut p = progress.lock().unwrap();
            p.txns += 1;
            p.changes += changes;
            p.orders += new_orders.len() as u64;
            for o in new_orders {
                if !gone.contains(&o) {
                    p.pending.insert(o, committed);
                }
            }
            for o in gone {
                if p.pending.remove(&o).is_some() {
                    p.vanished += 1;
                }
            }
        }
        // Deleted orders take their items along (ON DELETE CASCADE).
        if t.is_multiple_of(50) {
            w.items = client
                .query("SELECT id::text FROM order_items", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
        }
    }
    Ok(())
}

/// Poll `order_read_model` every 5 ms for the committed orders not seen yet, timing each
/// from its commit to its first sighting, until `stop`.
pub async fn watch_read_model(
    client: Client,
    progress: Shared,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tokio_postgres::Error> {
    let query = client
        .prepare("SELECT id::text FROM order_read_model WHERE id = ANY($1::text[]::uuid[])")
        .await?;
    while !*stop.borrow() {
        let ids: Vec<String> = progress
            .lock()
            .unwrap()
            .pending
            .keys()
            .take(5000)
            .cloned()
            .collect();
        if !ids.is_empty() {
            let rows = client.query(&query, &[&ids]).await?;
            let now = Instant::now();
            let mut p = progress.lock().unwrap();
            for r in rows {
                let id: String = r.get(0);
                if let Some(committed) = p.pending.remove(&id) {
                    p.seen.push((now - start, now - committed));
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    Ok(())
}

async fn one(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<String, tokio_postgres::Error> {
    Ok(tx.query_one(sql, params).await?.get(0))
}

async fn insert_customer(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
    email: &str,
) -> Result<String, tokio_postgres::Error> {
    one(
        tx,
        "INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id::text",
        &[&name, &email],
    )
    .await
}

async fn insert_item(
    tx: &tokio_postgres::Transaction<'_>,
    order: &str,
    product: &str,
    quantity: i32,
    unit_cents: i32,
) -> Result<String, tokio_postgres::Error> {
    one(
        tx,
        "INSERT INTO order_items (order_id, product_id, quantity, unit_cents)
         VALUES ($1::text::uuid, $2::text::uuid, $3, $4) RETURNING id::text",
        &[&order, &product, &quantity, &unit_cents],
    )
    .await
}
