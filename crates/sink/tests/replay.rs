//! Replay from a saved LSN (issue 4) against a real Postgres and Redis: the rewind fences
//! the running leader, the next leader re-applies, and the read models end exactly as the
//! uninterrupted run left them — Redis never moving back on the way. A replay from WAL the
//! slot no longer holds is refused with the oldest replayable LSN and the way out.

mod common;

use std::collections::HashMap;

use common::{
    Env, PRODUCTS_MIRROR, READ_MODELS, SCHEMA, assert_same, order_read_model_toml, projection,
    shop_workload,
};
use pgprism_decoder::Lsn;
use pgprism_sink::Projector;
use pgprism_sink::replay::rewind;

/// Everything a user could read: both read models in Postgres and every Redis hash.
async fn read_side(env: &Env) -> (Vec<Vec<String>>, Vec<Vec<String>>, Vec<Vec<String>>) {
    let orders = env
        .rows("SELECT id::text, customer_name, customer_email, status, item_count::text, total_cents::text, first_item_name, created_at::text, updated_at::text FROM order_read_model")
        .await;
    let products = env
        .rows("SELECT id::text, name, price_cents::text FROM products_copy")
        .await;
    let mut conn = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut hashes = Vec::new();
    for k in keys
        .into_iter()
        .filter(|k| k.starts_with("order:") || k.starts_with("product:"))
    {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut row: Vec<String> = h.into_iter().map(|(f, v)| format!("{f}={v}")).collect();
        row.sort();
        row.insert(0, k);
        hashes.push(row);
    }
    hashes.sort();
    (orders, products, hashes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_saved_lsn_converges() {
    let env = Env::new(&format!(
        "{SCHEMA}\n{READ_MODELS}\nCREATE TABLE products_copy (id uuid PRIMARY KEY, name text, price_cents int);"
    ));
    let client = env.client().await;
    // The first leader's epoch, as its election would allocate it.
    let first = pgprism_leader::supersede(&client, "test").await.unwrap();
    let cfg = env.config(
        vec![
            projection(&order_read_model_toml()),
            projection(PRODUCTS_MIRROR),
        ],
        first.0,
    );
    // Keep the WAL behind the offsets (replay window) so a replay can reach it.
    let window = u64::MAX;
    shop_workload(&client, 300, 11).await;
    let (mut old, _) = env.run(&cfg, window).await;
    let saved = env.marker();
    shop_workload(&client, 300, 12).await;
    let mid = env.marker();
    // Every product changes after `mid`: a replay that showed rows as of `mid` would show
    // older names.
    env.sql("UPDATE products SET name = name || ' (final)'");
    shop_workload(&client, 300, 13).await;
    env.run_with(&mut old, window).await;
    let uninterrupted = read_side(&env).await;
    assert_same(
        &uninterrupted.0,
        &env.rows("SELECT id::text, customer_name, customer_email, status, item_count::text, total_cents::text, first_item_name, created_at::text, updated_at::text FROM order_read_model_truth").await,
        "order_read_model before the replay",
    );

    // The operator replays every target from the saved LSN.
    let rewound = rewind(&cfg, "pgprism", saved, &[])
        .await
        .expect("replay accepted");
    assert_eq!(rewound.targets.len(), 4, "{rewound:?}");
    assert!(
        rewound
            .targets
            .iter()
            .all(|(_, before, after)| after < before && after.resume_lsn == saved)
    );
    // The running leader is fenced from now on: its next batch is refused.
    env.sql("INSERT INTO customers (name, email) VALUES ('late', 'late@example.com')");
    let until = env.marker();
    match env.try_run_until(&mut old, window, until).await {
        Err(pgprism_sink::drive::DriveError::Sink(e)) if e.is_fenced() => {}
        other => panic!("the old leader must be fenced: {other:?}"),
    }
    // A fenced replica steps down: its sessions close.
    drop(old);

    // The next leader re-applies from the saved LSN. Half way, Redis shows nothing older
    // than before the replay.
    let mut next = Projector::start(&env.config(cfg.projections.clone(), rewound.epoch.0 + 1))
        .await
        .unwrap();
    assert!(next.resume_lsn() <= saved);
    let halfway = env.run_until(&mut next, window, mid).await;
    assert!(
        halfway.iter().map(|r| r.changes).sum::<usize>() > 100,
        "changes were re-applied"
    );
    assert_same(
        &read_side(&env).await.2,
        &uninterrupted.2,
        "Redis half way through the replay",
    );
    assert_same(
        &read_side(&env).await.0,
        &uninterrupted.0,
        "order_read_model half way",
    );
    // The Postgres mirror applies the replay in one transaction, committed where the
    // target was before: readers keep seeing the newer rows meanwhile.
    assert_same(
        &read_side(&env).await.1,
        &uninterrupted.1,
        "products_copy half way",
    );
    let open: String = env.sql(
        "SELECT count(*) FROM pgprism.offsets WHERE replay_lsn IS NOT NULL AND sink = 'products.pg'",
    );
    assert_eq!(open.trim(), "1", "the replay is still open half way");

    // Caught up: exactly the state of the uninterrupted run; then the new leader goes on.
    env.run_with(&mut next, window).await;
    let replayed = read_side(&env).await;
    assert_same(
        &replayed.0,
        &uninterrupted.0,
        "order_read_model after the replay",
    );
    assert_same(
        &replayed.1,
        &uninterrupted.1,
        "products_copy after the replay",
    );
    assert_same(&replayed.2, &uninterrupted.2, "Redis after the replay");
    let open: String = env.sql("SELECT count(*) FROM pgprism.offsets WHERE replay_lsn IS NOT NULL");
    assert_eq!(open.trim(), "0", "every replay closed");
    env.sql("UPDATE products SET name = name || ' (after replay)'");
    env.run_with(&mut next, window).await;
    assert_same(
        &read_side(&env).await.1,
        &env.rows("SELECT id::text, name, price_cents::text FROM products")
            .await,
        "products_copy after the replay and a later change",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_wal_the_slot_no_longer_holds_is_refused_with_the_way_out() {
    let env = Env::new(&format!(
        "{SCHEMA}\n{READ_MODELS}\nCREATE TABLE products_copy (id uuid PRIMARY KEY, name text, price_cents int);"
    ));
    let cfg = env.config(vec![projection(PRODUCTS_MIRROR)], 1);
    let client = env.client().await;
    let early = env.marker();
    shop_workload(&client, 50, 1).await;
    // No replay window: the slot moves up to the offsets.
    env.run(&cfg, 0).await;
    let confirmed = || -> Lsn {
        env.sql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'pgprism'")
            .trim()
            .parse()
            .unwrap()
    };
    // The slot's confirmed position may still move a little after the stream closed (the
    // last status update lands): the message names it as the rewind read it.
    let before = confirmed();
    let err = rewind(&cfg, "pgprism", early, &[])
        .await
        .unwrap_err()
        .to_string();
    let after = confirmed();
    let named: Lsn = err
        .split("can replay only from ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|lsn| lsn.parse().ok())
        .unwrap_or_else(|| panic!("no position in {err:?}"));
    assert!(
        err.contains(&format!("cannot replay from {early}"))
            && (before..=after).contains(&named)
            && err.contains("rebuild"),
        "{err} (the slot's confirmed position was {before}, then {after})"
    );
    let err = rewind(&cfg, "pgprism", early, &["nope".to_owned()]).await;
    assert!(err.is_err());
    let late = env.marker();
    let err = rewind(&cfg, "pgprism", late, &["nope".to_owned()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no target or sink named \"nope\" (targets: products.pg, products.cache)"),
        "{err}"
    );
    // Only the named sink's targets move.
    let rewound = rewind(&cfg, "pgprism", late, &["cache".to_owned()])
        .await
        .unwrap();
    let names: Vec<&str> = rewound.targets.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["products.cache"]);
}
