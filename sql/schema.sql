-- The example write model: a small shop, normalized. pgprism keeps read models of it.
CREATE TABLE IF NOT EXISTS customers (
    id    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name  text NOT NULL,
    email text NOT NULL
);

CREATE TABLE IF NOT EXISTS products (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    price_cents int  NOT NULL CHECK (price_cents >= 0)
);

CREATE TABLE IF NOT EXISTS orders (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id uuid NOT NULL REFERENCES customers (id),
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'confirmed', 'shipped', 'cancelled')),
    total_cents int  NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_customer_id ON orders (customer_id);

CREATE TABLE IF NOT EXISTS order_items (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id   uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id uuid NOT NULL REFERENCES products (id),
    quantity   int  NOT NULL CHECK (quantity > 0),
    unit_cents int  NOT NULL CHECK (unit_cents >= 0)
);
CREATE INDEX IF NOT EXISTS order_items_order_id ON order_items (order_id);
CREATE INDEX IF NOT EXISTS order_items_product_id ON order_items (product_id);
-- A change of an item's order must reach both orders' read models: deletes and updates
-- need the old order_id, which the default replica identity (the primary key) omits.
ALTER TABLE order_items REPLICA IDENTITY FULL;
