//! The example shop (sql/schema.sql) as a workload: random inserts, updates and deletes
//! over all four tables, as an application would make them. Shared by tests, benchmarks
//! and the demo.

use rand::{Rng, SeedableRng};

/// The example write model (`sql/schema.sql`).
pub const SCHEMA: &str = include_str!("../../../sql/schema.sql");
/// The example read models and their ground truth (`sql/read_models.sql`).
pub const READ_MODELS: &str = include_str!("../../../sql/read_models.sql");

/// The columns of order_read_model, in the order [`TRUTH`] and [`MODEL`] select them.
pub const ORDER_COLUMNS: [&str; 9] = [
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

/// The ground truth as text, in the form the pipeline writes (session TimeZone UTC).
pub const TRUTH: &str = "SELECT id::text, customer_name, customer_email, status, item_count::text,
        total_cents::text, first_item_name, created_at::text, updated_at::text
   FROM order_read_model_truth";
/// The read model as text, like [`TRUTH`].
pub const MODEL: &str = "SELECT id::text, customer_name, customer_email, status, item_count::text,
        total_cents::text, first_item_name, created_at::text, updated_at::text
   FROM order_read_model";

/// Rows of `sql` as text (NULL as "∅"), sorted. Panics on a database error.
pub async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}\nSQL: {sql}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    rows.sort();
    rows
}

/// Every Redis hash matching `pattern`, as rows of `columns` (missing fields as "∅"),
/// sorted; each key must end with its hash's `id`. Panics on a Redis error.
pub async fn redis_rows(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    columns: &[&str],
) -> Vec<Vec<String>> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for k in keys {
        let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&k)
            .query_async(conn)
            .await
            .unwrap();
        assert!(
            h.get("id").is_some_and(|id| k.ends_with(id.as_str())),
            "key {k} holds its id: {h:?}"
        );
        rows.push(
            columns
                .iter()
                .map(|c| h.get(*c).cloned().unwrap_or_else(|| "∅".to_owned()))
                .collect(),
        );
    }
    rows.sort();
    rows
}

/// Assert two sorted row sets are equal, printing only what differs.
pub fn assert_same(got: &[Vec<String>], want: &[Vec<String>], what: &str) {
    if got == want {
        return;
    }
    let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
    panic!(
        "{what}: {} rows, want {}\nmissing or different (first 5): {missing:#?}\nunexpected (first 5): {extra:#?}",
        got.len(),
        want.len()
    );
}

/// The `order_read_model` projection query of the tests and benchmarks: the read model's
/// rows for the order ids in `$1` (the example configuration's query, as a constant).
pub const ORDER_QUERY: &str = "
SELECT o.id, c.name AS customer_name, c.email AS customer_email, o.status,
       coalesce(sum(i.quantity), 0)::int AS item_count,
       coalesce(sum(i.quantity * i.unit_cents), 0)::int AS total_cents,
       (SELECT p.name FROM order_items fi JOIN products p ON p.id = fi.product_id
         WHERE fi.order_id = o.id ORDER BY fi.id LIMIT 1) AS first_item_name,
       o.created_at, o.updated_at
  FROM orders o
  JOIN customers c ON c.id = o.customer_id
  LEFT JOIN order_items i ON i.order_id = o.id
 WHERE o.id = ANY($1)
 GROUP BY o.id, c.name, c.email";

/// The `order_read_model` query projection as TOML (`[[projections]]` content): the
/// query, the key mappings of all four tables, then `targets` (`[[targets]]` tables).
pub fn order_read_model_projection(targets: &str) -> String {
    format!(
        r#"
name = "order_read_model"
kind = "query"
key = ["id"]
query = """{ORDER_QUERY}"""
[keys]
"public.orders" = {{ column = "id" }}
"public.order_items" = {{ column = "order_id" }}
"public.customers" = {{ query = "SELECT id FROM orders WHERE customer_id = ANY($1)" }}
"public.products" = {{ query = "SELECT DISTINCT order_id FROM order_items WHERE product_id = ANY($1)" }}
{targets}"#
    )
}

/// [`order_read_model_projection`] into `public.order_read_model` on sink `pg` and
/// `order:{id}` hashes on sink `cache`: the read model as a user configures it.
pub fn order_read_model_pg_and_cache() -> String {
    order_read_model_projection(
        r#"[[targets]]
sink = "pg"
table = "public.order_read_model"
[[targets]]
sink = "cache"
key = "order:{id}"
format = "hash"
"#,
    )
}

/// A randomized shop workload: inserts, updates and deletes over all four tables,
/// including customer and product renames, item moves and deletes, and order deletes.
/// `txns` transactions of 1–3 operations each. Panics on a database error (it is a test
/// workload: a failed write is a broken test setup).
pub async fn workload(client: &tokio_postgres::Client, txns: usize, seed: u64) {
    run(client, txns, seed, false).await
}

/// [`workload`] that also changes and deletes rows that existed before it started (a
/// random sample of each table's rows), as an application with history does.
pub async fn workload_on_existing(client: &tokio_postgres::Client, txns: usize, seed: u64) {
    run(client, txns, seed, true).await
}

/// SQL that fills the shop with `orders` orders (0–3 items each, 1.5 on average) of
/// `orders / 20 + 1` customers over `orders / 100 + 1` products, then analyzes the tables
/// (the statistics a real database has).
pub fn seed_sql(orders: usize) -> String {
    let customers = orders / 20 + 1;
    let products = orders / 100 + 1;
    format!(
        "INSERT INTO customers (name, email)
           SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, {customers}) g;
         INSERT INTO products (name, price_cents)
           SELECT 'product ' || g, 100 + g FROM generate_series(1, {products}) g;
         INSERT INTO orders (customer_id, status, created_at, updated_at)
           SELECT c.a[1 + g % array_length(c.a, 1)],
                  (ARRAY['pending', 'confirmed', 'shipped', 'cancelled'])[1 + g % 4],
                  now() - make_interval(secs => g), now() - make_interval(secs => g)
             FROM (SELECT array_agg(id) AS a FROM customers) c, generate_series(1, {orders}) g;
         INSERT INTO order_items (order_id, product_id, quantity, unit_cents)
           SELECT o.id, p.a[1 + abs(hashtext(o.id::text || k)) % array_length(p.a, 1)], k, 100 * k
             FROM orders o, (SELECT array_agg(id) AS a FROM products) p, generate_series(1, 3) k
            WHERE abs(hashtext(o.id::text)) % 4 >= k;
         ANALYZE customers, products, orders, order_items;"
    )
}

async fn run(client: &tokio_postgres::Client, txns: usize, seed: u64, existing: bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut customers: Vec<String> = Vec::new();
    let mut products: Vec<String> = Vec::new();
    let mut orders: Vec<String> = Vec::new();
    let mut items: Vec<String> = Vec::new();
    let one = |rows: Vec<tokio_postgres::Row>| -> String { rows[0].get(0) };
    if existing {
        for (v, table, n) in [
            (&mut customers, "customers", 1_000),
            (&mut products, "products", 1_000),
            (&mut orders, "orders", 5_000),
            (&mut items, "order_items", 5_000),
        ] {
            let rows = client
                .query(
                    &format!("SELECT id::text FROM {table} ORDER BY random() LIMIT {n}"),
                    &[],
                )
                .await
                .unwrap();
            v.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        }
    }
    for c in 0..5 {
        customers.push(one(client
            .query(
                "INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id::text",
                &[&format!("customer {c}"), &format!("c{c}@example.com")],
            )
            .await
            .unwrap()));
    }
    for p in 0..5 {
        products.push(one(client
            .query(
                "INSERT INTO products (name, price_cents) VALUES ($1, $2) RETURNING id::text",
                &[&format!("product {p}"), &(100 + p)],
            )
            .await
            .unwrap()));
    }
    for t in 0..txns {
        client.batch_execute("BEGIN").await.unwrap();
        for _ in 0..rng.random_range(1..=3) {
            let pick = |v: &Vec<String>, rng: &mut rand::rngs::StdRng| {
                v[rng.random_range(0..v.len())].clone()
            };
            match rng.random_range(0..100) {
                0..=4 => customers.push(one(client
                    .query("INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id::text", &[&format!("customer t{t}"), &format!("t{t}@example.com")])
                    .await.unwrap())),
                5..=9 => products.push(one(client
                    .query("INSERT INTO products (name, price_cents) VALUES ($1, $2) RETURNING id::text", &[&format!("product t{t}"), &rng.random_range(1..10_000i32)])
                    .await.unwrap())),
                10..=29 => {
                    let o = one(client
                        .query("INSERT INTO orders (customer_id) VALUES ($1::text::uuid) RETURNING id::text", &[&pick(&customers, &mut rng)])
                        .await.unwrap());
                    for _ in 0..rng.random_range(0..4) {
                        items.push(one(client
                            .query("INSERT INTO order_items (order_id, product_id, quantity, unit_cents) VALUES ($1::text::uuid, $2::text::uuid, $3, $4) RETURNING id::text",
                                   &[&o, &pick(&products, &mut rng), &rng.random_range(1..5i32), &rng.random_range(0..5_000i32)])
                            .await.unwrap()));
                    }
                    orders.push(o);
                }
                30..=39 if !orders.is_empty() => {
                    let status = ["pending", "confirmed", "shipped", "cancelled"][rng.random_range(0..4)];
                    client.execute("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1::text::uuid", &[&pick(&orders, &mut rng), &status]).await.unwrap();
                }
                40..=49 if !orders.is_empty() => {
                    items.push(one(client
                        .query("INSERT INTO order_items (order_id, product_id, quantity, unit_cents) VALUES ($1::text::uuid, $2::text::uuid, $3, $4) RETURNING id::text",
                               &[&pick(&orders, &mut rng), &pick(&products, &mut rng), &rng.random_range(1..5i32), &rng.random_range(0..5_000i32)])
                        .await.unwrap()));
                }
                50..=57 if !items.is_empty() => {
                    let i = rng.random_range(0..items.len());
                    let id = items.swap_remove(i);
                    client.execute("DELETE FROM order_items WHERE id = $1::text::uuid", &[&id]).await.unwrap();
                }
                58..=65 if !items.is_empty() => {
                    client.execute("UPDATE order_items SET quantity = quantity + 1 WHERE id = $1::text::uuid", &[&pick(&items, &mut rng)]).await.unwrap();
                }
                66..=71 if !items.is_empty() && !orders.is_empty() => {
                    // Move an item to another order: both orders change.
                    client.execute("UPDATE order_items SET order_id = $2::text::uuid WHERE id = $1::text::uuid", &[&pick(&items, &mut rng), &pick(&orders, &mut rng)]).await.unwrap();
                }
                72..=79 => {
                    client.execute("UPDATE customers SET name = name || '+', email = 'e' || $2 || '@example.com' WHERE id = $1::text::uuid", &[&pick(&customers, &mut rng), &t.to_string()]).await.unwrap();
                }
                80..=89 => {
                    client.execute("UPDATE products SET name = name || '*' WHERE id = $1::text::uuid", &[&pick(&products, &mut rng)]).await.unwrap();
                }
                90..=99 if !orders.is_empty() => {
                    let i = rng.random_range(0..orders.len());
                    let id = orders.swap_remove(i);
                    client.execute("DELETE FROM orders WHERE id = $1::text::uuid", &[&id]).await.unwrap();
                }
                _ => {}
            }
        }
        client.batch_execute("COMMIT").await.unwrap();
        // Deleted orders take their items along (ON DELETE CASCADE).
        if t % 50 == 0 {
            let live: Vec<String> = client
                .query(
                    "SELECT id::text FROM order_items WHERE id = ANY($1::text[]::uuid[])",
                    &[&items],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            items = live;
        }
    }
}
