//! The shop preloaded for the `pgprism run` benches (live_lag, takeover): customers,
//! products and orders with their items, `ANALYZE`d, and lookup tables so that a
//! `pgbench` script writes orders by number through an index.

// Each bench includes `common`; the sink crate's benches use none of this.
#![allow(dead_code)]

/// Orders (three items each) present before pgprism first starts.
pub const ORDERS: usize = 10_000;
/// Customers the orders belong to.
pub const CUSTOMERS: usize = 1_000;
/// Products the items name.
pub const PRODUCTS: usize = 200;

/// Lookup tables outside the publication, so the write picks customers and products by
/// number through an index.
pub const PRELOAD: &str = "
CREATE SCHEMA bench;
CREATE TABLE bench.customers (n int PRIMARY KEY, id uuid NOT NULL);
CREATE TABLE bench.products (n int PRIMARY KEY, id uuid NOT NULL, price int NOT NULL);
INSERT INTO customers (name, email)
     SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, {customers}) g;
INSERT INTO bench.customers SELECT row_number() OVER (ORDER BY id), id FROM customers;
INSERT INTO products (name, price_cents)
     SELECT 'product ' || g, 100 + g * 7 FROM generate_series(1, {products}) g;
INSERT INTO bench.products SELECT row_number() OVER (ORDER BY id), id, price_cents FROM products;
INSERT INTO orders (customer_id, status)
     SELECT (SELECT id FROM bench.customers WHERE n = 1 + g % {customers}), 'confirmed'
       FROM generate_series(1, {orders}) g;
INSERT INTO order_items (order_id, product_id, quantity, unit_cents)
     SELECT o.id, p.id, 1 + k, p.price
       FROM orders o, generate_series(0, 2) k,
            LATERAL (SELECT id, price FROM bench.products
                      WHERE n = 1 + (abs(hashtext(o.id::text)) + k * 71) % {products}) p;
ANALYZE;
";

/// The write: one order with three items, one statement (a `pgbench` script).
pub const ORDER_SCRIPT: &str = "\\set c random(1, {customers})
\\set p random(1, {products})
WITH o AS (INSERT INTO orders (customer_id) SELECT id FROM bench.customers WHERE n = :c RETURNING id)
INSERT INTO order_items (order_id, product_id, quantity, unit_cents)
SELECT o.id, p.id, 1 + p.n % 3, p.price
  FROM o, bench.products p
 WHERE p.n IN (:p, 1 + (:p + 61) % {products}, 1 + (:p + 122) % {products});
";

/// `sql` with the sizes above in place of `{customers}`, `{products}`, `{orders}`.
pub fn fill(sql: &str) -> String {
    sql.replace("{customers}", &CUSTOMERS.to_string())
        .replace("{products}", &PRODUCTS.to_string())
        .replace("{orders}", &ORDERS.to_string())
}

/// Every order `order_read_model` holds equals its ground-truth row (the benches' end).
pub fn assert_truth(pg: &pgprism_testkit::PgServer, db: &str) {
    let differ = pg
        .psql(
            db,
            "SELECT count(*) FROM (SELECT * FROM order_read_model_truth t
               WHERE t.id IN (SELECT id FROM order_read_model)
              EXCEPT SELECT * FROM order_read_model) d",
        )
        .unwrap();
    assert_eq!(
        differ.trim(),
        "0",
        "order_read_model differs from the ground truth"
    );
}
