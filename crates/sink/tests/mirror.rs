//! Mirror projections end to end, against a real Postgres and Redis: TOAST, odd
//! identifiers, truncate, dead letters with held keys and `dlq retry`, and replays that
//! never move a Redis key back in time.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Env, PRODUCTS_MIRROR, assert_same, projection};
use pgprism_decoder::Lsn;
use pgprism_leader::Offset;
use pgprism_sink::Projector;
use pgprism_sink::dead_letter::{self, Action, Selection};

async fn hash(env: &Env, key: &str) -> HashMap<String, String> {
    let mut c = env.redis().await;
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn get(env: &Env, key: &str) -> Option<String> {
    let mut c = env.redis().await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn keys(env: &Env, pattern: &str) -> Vec<String> {
    let mut c = env.redis().await;
    let mut k: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .unwrap();
    k.sort();
    k
}

const DOCS: &str = "
CREATE TABLE docs (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL);
CREATE TABLE docs_full (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL);
ALTER TABLE docs_full REPLICA IDENTITY FULL;
CREATE SCHEMA read;
CREATE TABLE read.docs (id int PRIMARY KEY, title text, body text);
CREATE TABLE read.docs_full (id int PRIMARY KEY, title text, body text);";

fn docs_projection(source: &str, target: &str, prefix: &str) -> String {
    format!(
        r#"
name = "{source}"
kind = "mirror"
source = "public.{source}"
[[targets]]
sink = "pg"
table = "read.{target}"
[[targets]]
sink = "cache"
name = "{source}.hash"
key = "{prefix}:{{id}}"
[[targets]]
sink = "cache"
name = "{source}.json"
key = "{prefix}-json:{{id}}"
format = "json"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_kept_in_postgres_and_redis() {
    let env = Env::new(DOCS);
    let cfg = env.config(
        vec![
            projection(&docs_projection("docs", "docs", "doc")),
            projection(&docs_projection("docs_full", "docs_full", "docf")),
        ],
        1,
    );
    // Random hex does not compress below the TOAST threshold: stored out of line.
    for table in ["docs", "docs_full"] {
        env.sql(&format!(
            "INSERT INTO {table} SELECT g, 'title ' || g,
                    (SELECT string_agg(md5(random()::text || g || s), '') FROM generate_series(1, 400) s)
               FROM generate_series(1, 3) g"
        ));
    }
    let (mut projector, _) = env.run(&cfg, 0).await;
    // Only the title changes: Postgres sends the body as "unchanged TOAST" (docs) or
    // the old row's value (docs_full).
    for table in ["docs", "docs_full"] {
        env.sql(&format!("UPDATE {table} SET title = 'new ' || id"));
        env.sql(&format!(
            "UPDATE {table} SET title = title || '!' WHERE id = 2"
        ));
    }
    env.run_with(&mut projector, 0).await;
    for (table, prefix) in [("docs", "doc"), ("docs_full", "docf")] {
        let source = env
            .rows(&format!("SELECT id::text, title, body FROM {table}"))
            .await;
        assert!(source.iter().all(|r| r[2].len() == 12_800));
        let target = env
            .rows(&format!("SELECT id::text, title, body FROM read.{table}"))
            .await;
        assert_same(&target, &source, &format!("read.{table}"));
        for row in &source {
            let h = hash(&env, &format!("{prefix}:{}", row[0])).await;
            assert_eq!(h.get("title"), Some(&row[1]), "{prefix} hash title");
            assert_eq!(h.get("body"), Some(&row[2]), "{prefix} hash keeps the body");
            let doc: serde_json::Value = serde_json::from_str(
                &get(&env, &format!("{prefix}-json:{}", row[0]))
                    .await
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(doc["id"], serde_json::json!(row[0].parse::<i64>().unwrap()));
            assert_eq!(
                doc["title"],
                serde_json::json!(row[1]),
                "{prefix} json title"
            );
            assert_eq!(
                doc["body"],
                serde_json::json!(row[2]),
                "{prefix} json keeps the body"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_spaces_upper_case_and_unicode_in_names_work() {
    let env = Env::new(
        r#"
CREATE SCHEMA "Odd ""Schema""";
CREATE TABLE "Odd ""Schema"""."Tab le ü" ("Id" int PRIMARY KEY, "naMe x" text, "ü ""q""" numeric, "select" int);
CREATE SCHEMA "Read Side";
CREATE TABLE "Read Side"."tgt ""ü""" ("Id" int PRIMARY KEY, "Näme" text, "ü ""q""" numeric, "select" int);"#,
    );
    let cfg = env.config(
        vec![projection(
            r#"
name = "odd ☃"
kind = "mirror"
source = '"Odd ""Schema"""."Tab le ü"'
rename = { "naMe x" = "Näme" }
[[targets]]
sink = "pg"
table = '"Read Side"."tgt ""ü"""'
[[targets]]
sink = "cache"
key = "odd:{Id}"
"#,
        )],
        1,
    );
    env.sql(
        r#"INSERT INTO "Odd ""Schema"""."Tab le ü" VALUES (1, 'a''b "c"', 1.50, 7), (2, 'ü ☃', NULL, 8), (3, 'x', 3, 9);
           UPDATE "Odd ""Schema"""."Tab le ü" SET "naMe x" = 'renamed', "Id" = 4 WHERE "Id" = 3;
           DELETE FROM "Odd ""Schema"""."Tab le ü" WHERE "Id" = 2;"#,
    );
    env.run(&cfg, 0).await;
    let source = env
        .rows(r#"SELECT "Id"::text, "naMe x", "ü ""q"""::text, "select"::text FROM "Odd ""Schema"""."Tab le ü""#)
        .await;
    let target = env
        .rows(r#"SELECT "Id"::text, "Näme", "ü ""q"""::text, "select"::text FROM "Read Side"."tgt ""ü""""#)
        .await;
    assert_eq!(source.len(), 2);
    assert_same(&target, &source, "odd target");
    assert_eq!(keys(&env, "odd:*").await, ["odd:1", "odd:4"]);
    let h = hash(&env, "odd:1").await;
    assert_eq!(h.get("Näme").map(String::as_str), Some("a'b \"c\""));
    assert_eq!(h.get("ü \"q\"").map(String::as_str), Some("1.50"));
}

const BULK: &str = r#"
CREATE TYPE mood AS ENUM ('ok', 'très "bien"');
CREATE TABLE "Bulk Src" ("Id" int PRIMARY KEY, t text, j jsonb, a text[], b bytea, n numeric,
    ts timestamptz, iv interval, m mood, u uuid, f float8, ok bool, price int NOT NULL);
CREATE TABLE "bulk ""tgt""" ("Id" int PRIMARY KEY, t text, j jsonb, a text[], b bytea, n numeric,
    ts timestamptz, iv interval, m mood, u uuid, f float8, ok bool, price int CHECK (price <> 13));"#;

/// Every column of both tables as text, the source without the rejected row.
const BULK_SOURCE: &str = r#"SELECT "Id"::text, t, j::text, a::text, b::text, n::text, ts::text, iv::text,
    m::text, u::text, f::text, ok::text, price::text FROM "Bulk Src" WHERE price <> 13"#;
const BULK_TARGET: &str = r#"SELECT "Id"::text, t, j::text, a::text, b::text, n::text, ts::text, iv::text,
    m::text, u::text, f::text, ok::text, price::text FROM "bulk ""tgt""""#;

/// The source columns' values for row `g`: everything `COPY`'s text format must escape
/// (tabs, newlines, carriage returns, backslashes, a literal `\N` and `\.`), NULLs, empty
/// strings, unicode, arrays, JSON, bytea, enums with quotes, NaN.
const BULK_VALUES: &str = r#"
    CASE g % 10 WHEN 0 THEN E'tab\there' WHEN 1 THEN E'new\nline\n' WHEN 2 THEN E'cr\r\nx'
        WHEN 3 THEN E'back\\slash\\' WHEN 4 THEN E'\\N' WHEN 5 THEN E'\\.' WHEN 6 THEN ''
        WHEN 7 THEN NULL WHEN 8 THEN 'ünï ☃ "q" ''s''' ELSE repeat(md5(g::text), 3) END,
    jsonb_build_object('g', g, 's', E'a\tb\n"c"\\', 'u', 'ü'),
    ARRAY[E'x\ty', 'q"q', E'b\\s', NULL, ''],
    decode(md5(g::text), 'hex') || '\x005c09'::bytea,
    g / 7.0,
    timestamptz '2026-03-29 01:30:00+00' + g * interval '17 minutes 3.25 seconds',
    g * interval '1 day 2 hours 3.5 seconds',
    (CASE WHEN g % 2 = 0 THEN 'ok' ELSE 'très "bien"' END)::mood,
    md5(g::text)::uuid,
    CASE WHEN g % 3 = 0 THEN 'NaN'::float8 ELSE g / 3.0 END,
    g % 2 = 0"#;

/// Large batches take the `COPY` path and every value arrives exactly, inserted and then
/// updated in bulk; a row the target rejects inside a bulk batch written in the background
/// fails that batch and the one after it, both are flushed again in order, the row is
/// bisected out (the halves are bulk again, so the staging table is reused inside one
/// transaction) and dead-lettered while the rest lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_batches_copy_every_value_exactly() {
    bulk(2).await;
}

/// The same with `batch.sessions = 1`: background flushes one at a time, one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_batches_on_one_session() {
    bulk(1).await;
}

async fn bulk(sessions: usize) {
    let env = Env::new(BULK);
    let mut cfg = env.config(
        vec![projection(
            r#"
name = "bulk"
kind = "mirror"
source = 'public."Bulk Src"'
[[targets]]
sink = "pg"
table = 'public."bulk ""tgt"""'
"#,
        )],
        1,
    );
    cfg.batch.sessions = sessions;
    // About stream batches: the rows come through the slot (written after it was
    // created), not from a backfill of existing rows.
    cfg.backfill.initial = false;
    // One transaction of 12,000 rows: several bulk batches, flushed in the background on
    // two sessions in turn. Row 1234, in the first batch, breaks the target's CHECK: that
    // batch fails while the next one waits to apply after it, and both are flushed again.
    env.sql(&format!(
        r#"INSERT INTO "Bulk Src" SELECT g, {BULK_VALUES},
               CASE WHEN g = 1234 THEN 13 ELSE g + 100 END FROM generate_series(1, 12000) g"#
    ));
    // Every committed offset inside that transaction must cover exactly the rows in the
    // target: a trigger on the offset row logs both in the committing transaction.
    let mut projector = Projector::start(&cfg).await.expect("projector starts");
    env.sql(
        r#"CREATE TABLE offset_log (changes_done bigint, target_rows bigint);
           CREATE FUNCTION log_offset() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               INSERT INTO offset_log SELECT NEW.changes_done, count(*) FROM "bulk ""tgt""";
               RETURN NEW;
           END $$;
           CREATE TRIGGER log_offset BEFORE UPDATE ON pgprism.offsets
               FOR EACH ROW EXECUTE FUNCTION log_offset();"#,
    );
    // Straight from the stream: flushes fall where batches fill, in every run (with
    // `drive`, a pause of the stream on a loaded machine could flush in between).
    let reports = env.push_until(&mut projector, env.marker()).await;
    let log = env
        .rows("SELECT changes_done::text, target_rows::text FROM offset_log")
        .await;
    let inside = log.iter().filter(|r| r[0] != "0").count();
    assert!(inside >= 2, "batches inside the transaction: {log:?}");
    for row in &log {
        let (done, rows): (u64, u64) = (row[0].parse().unwrap(), row[1].parse().unwrap());
        match done {
            // Before the transaction, or after all of it.
            0 => assert!(rows == 0 || rows == 11999, "offset vs rows: {log:?}"),
            _ => assert_eq!(
                rows,
                done - u64::from(done >= 1234),
                "offset vs rows: {log:?}"
            ),
        }
    }
    let letters = dead_letter::list(&env.client().await, "test", &Selection::default())
        .await
        .unwrap();
    assert_eq!(
        reports.iter().map(|r| r.dead_letters).sum::<u64>(),
        1,
        "{letters:#?}"
    );
    // Each row written once: a bisection's halves never re-apply rows staged before.
    assert_eq!(reports.iter().map(|r| r.written).sum::<u64>(), 11999);
    let staged = env.sql(
        r"SELECT count(*) FROM pg_class WHERE relname LIKE 'pgprism\_stage\_%' AND relpersistence = 't'",
    );
    assert_ne!(staged.trim(), "0", "the bulk path was taken");
    let open = env.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgprism sink bulk.pg'",
    );
    assert_eq!(open.trim(), sessions.to_string(), "sink sessions");
    let (source, target) = (env.rows(BULK_SOURCE).await, env.rows(BULK_TARGET).await);
    assert_eq!(source.len(), 11999);
    assert_same(&target, &source, "bulk target after the inserts");

    // Every row changes, three times over, in three transactions: bulk upserts onto
    // existing rows, each key in several batches that must apply in order.
    for shift in [5, 6, 7] {
        env.sql(&format!(
            r#"UPDATE "Bulk Src" s SET (t, j, a, b, n, ts, iv, m, u, f, ok) =
                   (SELECT {BULK_VALUES} FROM (SELECT s."Id" + {shift} AS g) x)"#
        ));
    }
    env.run_with(&mut projector, 0).await;
    let (source, target) = (env.rows(BULK_SOURCE).await, env.rows(BULK_TARGET).await);
    assert_eq!(target.len(), 11999);
    assert_same(&target, &source, "bulk target after the updates");
}

const PRODUCTS: &str = "
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price_cents int NOT NULL);
CREATE TABLE products_copy (id int PRIMARY KEY, name text, price_cents int CHECK (price_cents < 1000));";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_is_dead_lettered_its_key_held_and_retried_in_order() {
    let env = Env::new(PRODUCTS);
    let mut cfg = env.config(vec![projection(PRODUCTS_MIRROR)], 1);
    // About changes from the stream (the rows are written after the slot was created): a
    // backfill would reject the same rows first and hold their streamed inserts behind.
    cfg.backfill.initial = false;
    env.sql("INSERT INTO products SELECT g, 'p' || g, 100 * g FROM generate_series(1, 20) g");
    // 10..=20 cost 1000 or more: the target's CHECK rejects them.
    let (mut projector, reports) = env.run(&cfg, 0).await;
    assert_eq!(reports.iter().map(|r| r.dead_letters).sum::<u64>(), 11);
    // Later changes of rejected keys must wait behind them, even one that would pass
    // (15 at 999); changes of other keys flow.
    env.sql("UPDATE products SET price_cents = 999, name = 'fixed 15' WHERE id = 15");
    env.sql("UPDATE products SET name = 'later ' || id WHERE id IN (3, 16)");
    env.run_with(&mut projector, 0).await;

    // Everything but 10..=20's keys that fail flowed; the rejected keys are held.
    let client = env.client().await;
    let letters = dead_letter::list(&client, "test", &Selection::default())
        .await
        .unwrap();
    let pg_letters: Vec<_> = letters
        .iter()
        .filter(|l| l.target == "products.pg")
        .collect();
    let failed_keys: Vec<&str> = pg_letters
        .iter()
        .filter(|l| l.status == "failed")
        .map(|l| l.key.as_str())
        .collect();
    assert_eq!(failed_keys.len(), 11, "{pg_letters:#?}");
    assert!(
        pg_letters
            .iter()
            .filter(|l| l.status == "failed")
            .all(|l| l.sqlstate.as_deref() == Some("23514"))
    );
    let held: Vec<_> = pg_letters.iter().filter(|l| l.status == "held").collect();
    assert!(
        held.iter().any(|l| l.key == r#"["15"]"#) && held.iter().any(|l| l.key == r#"["16"]"#),
        "later changes of rejected keys are held: {held:#?}"
    );
    assert!(
        letters.iter().all(|l| l.target != "products.cache"),
        "Redis took every row"
    );
    let copied = env.rows("SELECT id::text, name FROM products_copy").await;
    assert_eq!(copied.len(), 9, "rows 1..=9 flowed: {copied:?}");
    assert!(copied.contains(&vec!["3".into(), "later 3".into()]));

    // Fix the cause, ask for a retry: the letters apply in order, the keys flow again.
    env.sql("ALTER TABLE products_copy DROP CONSTRAINT products_copy_price_cents_check");
    let marked = dead_letter::request(&client, "test", &Selection::default(), Action::Retry)
        .await
        .unwrap();
    assert!(marked >= 12);
    env.sql("UPDATE products SET name = 'after retry' WHERE id = 20");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        env.run_with(&mut projector, 0).await;
        let left = dead_letter::list(&client, "test", &Selection::default())
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "dead letters left: {left:#?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let source = env
        .rows("SELECT id::text, name, price_cents::text FROM products")
        .await;
    let copied = env
        .rows("SELECT id::text, name, price_cents::text FROM products_copy")
        .await;
    assert_same(&copied, &source, "products_copy after the retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_empties_the_targets() {
    let env = Env::new(PRODUCTS);
    env.sql("ALTER TABLE products_copy DROP CONSTRAINT products_copy_price_cents_check");
    let cfg = env.config(vec![projection(PRODUCTS_MIRROR)], 1);
    env.sql("INSERT INTO products SELECT g, 'p' || g, g FROM generate_series(1, 50) g");
    let (mut projector, _) = env.run(&cfg, 0).await;
    assert_eq!(keys(&env, "product:*").await.len(), 50);
    env.sql("TRUNCATE products; INSERT INTO products VALUES (7, 'after', 1)");
    env.run_with(&mut projector, 0).await;
    assert_eq!(
        env.rows("SELECT id::text, name FROM products_copy").await,
        [["7".to_owned(), "after".to_owned()]]
    );
    assert_eq!(keys(&env, "product:*").await, ["product:7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_moves_a_redis_key_back_in_time() {
    let env = Env::new(PRODUCTS);
    env.sql("ALTER TABLE products_copy DROP CONSTRAINT products_copy_price_cents_check");
    let cfg = env.config(vec![projection(PRODUCTS_MIRROR)], 1);
    env.sql("INSERT INTO products VALUES (1, 'v1', 1), (2, 'gone', 2)");
    let mid: Lsn = env.marker();
    env.sql("UPDATE products SET name = 'v2' WHERE id = 1; DELETE FROM products WHERE id = 2");
    // Keep the WAL so the replay can read it again.
    let (mut projector, _) = env.run(&cfg, u64::MAX).await;
    assert_eq!(
        hash(&env, "product:1")
            .await
            .get("name")
            .map(String::as_str),
        Some("v2")
    );
    assert!(keys(&env, "product:2").await.is_empty());

    // Replay from the start, but stop right after the old values: without the per-key
    // guard Redis would now say v1 and resurrect product 2.
    projector
        .rewind(Offset::default(), &["products.cache".to_owned()])
        .await
        .unwrap();
    env.run_until(&mut projector, u64::MAX, mid).await;
    assert_eq!(
        hash(&env, "product:1")
            .await
            .get("name")
            .map(String::as_str),
        Some("v2")
    );
    assert!(
        keys(&env, "product:2").await.is_empty(),
        "the tombstone keeps product 2 deleted"
    );
    // And the full replay converges on the same state.
    env.run_with(&mut projector, u64::MAX).await;
    assert_eq!(
        hash(&env, "product:1")
            .await
            .get("name")
            .map(String::as_str),
        Some("v2")
    );
    assert!(keys(&env, "product:2").await.is_empty());
    assert_same(
        &env.rows("SELECT id::text, name FROM products_copy").await,
        &env.rows("SELECT id::text, name FROM products").await,
        "products_copy",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ttls_tombstones_invalidation_and_column_subsets() {
    let env = Env::new(
        "CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price_cents int NOT NULL, secret text);
         CREATE TABLE products_public (id int PRIMARY KEY, title text);",
    );
    let cfg = env.config(
        vec![projection(
            r#"
name = "products"
kind = "mirror"
source = "public.products"
columns = ["id", "name"]
rename = { name = "title" }
[[targets]]
sink = "pg"
table = "public.products_public"
[[targets]]
sink = "cache"
name = "ttl"
key = "p:{id}"
ttl = "100s"
ttl_jitter = "50s"
tombstone_ttl = "1h"
[[targets]]
sink = "cache"
name = "cache-aside"
key = "aside:{id}"
format = "invalidate"
"#,
        )],
        1,
    );
    let mut conn = env.redis().await;
    // The application caches product 2 itself; any change of it must drop the entry.
    let _: () = redis::cmd("SET")
        .arg("aside:2")
        .arg("cached by the app")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("aside:99")
        .arg("untouched")
        .query_async(&mut conn)
        .await
        .unwrap();
    env.sql(
        "INSERT INTO products SELECT g, 'p' || g, g, 'hidden' FROM generate_series(1, 20) g;
         DELETE FROM products WHERE id = 3;",
    );
    env.run(&cfg, 0).await;
    assert_same(
        &env.rows("SELECT id::text, title FROM products_public")
            .await,
        &env.rows("SELECT id::text, name FROM products").await,
        "only the chosen columns, renamed",
    );
    let h = hash(&env, "p:1").await;
    assert_eq!(h.len(), 2, "only id and title: {h:?}");
    assert_eq!(h.get("title").map(String::as_str), Some("p1"));
    let mut ttls = Vec::new();
    for id in [1, 2, 4, 5, 6, 7, 8, 9, 10, 11] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("p:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let guard: i64 = redis::cmd("PTTL")
            .arg(format!("pgprism:pos:p:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            (90_000..=150_000).contains(&ttl),
            "ttl {ttl} within ttl + jitter"
        );
        assert!(
            (ttl - guard).abs() < 5_000,
            "the guard expires with its key: {ttl} vs {guard}"
        );
        ttls.push(ttl / 1000);
    }
    ttls.sort();
    ttls.dedup();
    assert!(ttls.len() > 3, "jitter spreads expiries: {ttls:?}");
    let tomb: i64 = redis::cmd("PTTL")
        .arg("pgprism:pos:p:3")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&tomb),
        "delete tombstone lives tombstone_ttl: {tomb}"
    );
    assert!(keys(&env, "p:3").await.is_empty());
    assert!(
        keys(&env, "aside:2").await.is_empty(),
        "a changed key is invalidated"
    );
    assert_eq!(
        keys(&env, "aside:99").await,
        ["aside:99"],
        "other keys stay"
    );
    assert!(
        keys(&env, "aside:1").await.is_empty(),
        "invalidation writes nothing"
    );
}
