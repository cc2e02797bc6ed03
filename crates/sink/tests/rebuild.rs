//! `pgprism rebuild` at the library level: a read model that drifted is built again
//! beside the live one while the application writes and readers read; readers never see
//! it empty or partial (nor an error), and after the swap it equals the ground truth.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{
    Env, MODEL, READ_MODELS, SCHEMA, TRUTH, assert_orders_match_truth, assert_same,
    order_read_model_toml, projection,
};
use pgprism_sink::drive::DriveError;
use pgprism_sink::{Projector, SinkError};
use pgprism_testkit::shop::{seed_sql, workload_on_existing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_live_writes_swaps_in_a_whole_table() {
    let orders = 5_000;
    let env = Env::new(&format!("{SCHEMA}\n{READ_MODELS}\n{}", seed_sql(orders)));
    let mut cfg = env.config(vec![projection(&order_read_model_toml())], 1);
    cfg.backfill.chunk_size = 500;
    let (projector, _) = env.run(&cfg, 0).await;
    assert!(!projector.backfilling());
    assert_same(
        &env.rows(MODEL).await,
        &env.rows(TRUTH).await,
        "after the initial backfill",
    );
    drop(projector);

    // The read model drifts (a bug fixed since, a hand edit): a rebuild must repair it.
    env.sql("UPDATE order_read_model SET customer_name = 'stale' WHERE item_count > 1");
    // The application reads it as its own role: that must survive the swap.
    env.sql("CREATE ROLE app_reader; GRANT SELECT ON order_read_model TO app_reader");
    let live = env
        .rows("SELECT count(*)::text FROM order_read_model")
        .await[0][0]
        .parse::<usize>()
        .unwrap();

    // Readers on their own session for the whole rebuild: every count, and any error.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let client = env.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut counts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client
                    .query_one("SELECT count(*) FROM order_read_model", &[])
                    .await
                {
                    Ok(r) => counts.push(r.get::<_, i64>(0)),
                    Err(e) => return Err(format!("a reader failed: {e}")),
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Ok(counts)
        })
    };
    let writer = env.client().await;
    let workload = tokio::spawn(async move { workload_on_existing(&writer, 800, 5).await });

    let requested = pgprism_sink::rebuild::request(&cfg, "order_read_model")
        .await
        .expect("rebuild requested");
    assert_eq!(requested.targets.len(), 2, "{:?}", requested.targets);
    let mut cfg = cfg.clone();
    cfg.epoch = pgprism_leader::Epoch(requested.epoch.0 + 1);
    let mut swapped = false;
    let mut lives = 0;
    loop {
        lives += 1;
        assert!(lives < 20, "the rebuild swapped in within 20 starts");
        let mut projector = Projector::start(&cfg).await.unwrap_or_else(|e| {
            panic!(
                "life {lives}: projector starts: {e}\n{}\n{}",
                env.sql("SELECT sink, resume_lsn, epoch, backfill FROM pgprism.offsets"),
                env.sql("SELECT relname FROM pg_class WHERE relname LIKE 'order_read%'")
            )
        });
        // Whether the workload was over *before* the marker: only then does reaching the
        // marker mean every write of it is in.
        let written = workload.is_finished();
        let until = env.marker();
        match env.try_run_until(&mut projector, 0, until).await {
            Ok(_) if written && swapped => break,
            Ok(_) => {}
            Err(DriveError::Sink(SinkError::Restart { message, .. })) => {
                assert!(message.contains("swapped"), "{message}");
                swapped = true;
            }
            Err(e) => panic!("pipeline failed: {e}"),
        }
    }
    workload.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let counts = reader.await.unwrap().expect("readers never failed");
    let least = *counts.iter().min().unwrap();
    assert!(
        counts.len() > 50,
        "readers read throughout: {}",
        counts.len()
    );
    assert!(
        least as usize >= live * 9 / 10,
        "readers never saw the table empty or partial: least {least} of {live}"
    );
    assert_orders_match_truth(&env, "after the rebuild").await;
    assert_eq!(
        env.sql("SELECT count(*) FROM pg_class WHERE relname LIKE 'order_read_model_pgprism%'")
            .trim(),
        "0",
        "no shadow or old table left"
    );
    assert_eq!(
        env.sql("SELECT has_table_privilege('app_reader', 'order_read_model', 'SELECT')")
            .trim(),
        "t",
        "the grant survived the swap"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgprism.offsets WHERE sink LIKE '%#rebuild'")
            .trim(),
        "0"
    );
}
