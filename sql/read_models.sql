-- The read model pgprism maintains from the write model in schema.sql.
CREATE TABLE IF NOT EXISTS order_read_model (
    id              uuid PRIMARY KEY,
    customer_name   text,
    customer_email  text,
    status          text,
    item_count      int,
    total_cents     int,
    first_item_name text,
    created_at      timestamptz,
    updated_at      timestamptz
);

-- The ground truth: after any run, order_read_model must equal this view row for row.
-- item_count = sum(quantity); total_cents = sum(quantity * unit_cents);
-- first_item_name = the product name of the item with the smallest id.
CREATE OR REPLACE VIEW order_read_model_truth AS
SELECT o.id,
       c.name  AS customer_name,
       c.email AS customer_email,
       o.status,
       coalesce(sum(i.quantity), 0)::int                AS item_count,
       coalesce(sum(i.quantity * i.unit_cents), 0)::int AS total_cents,
       (SELECT p.name FROM order_items fi JOIN products p ON p.id = fi.product_id
         WHERE fi.order_id = o.id ORDER BY fi.id LIMIT 1)  AS first_item_name,
       o.created_at,
       o.updated_at
  FROM orders o
  JOIN customers c ON c.id = o.customer_id
  LEFT JOIN order_items i ON i.order_id = o.id
 GROUP BY o.id, c.name, c.email;
