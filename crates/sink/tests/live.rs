//! Batching under live load: a steady stream of small transactions, arriving faster than
//! one flush takes, is grouped into batches of many transactions (group commit), and the
//! lag stays bounded by the flush time instead of growing with every transaction.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Env, projection};
use pgprism_decoder::stream::{ReplicationStream, StreamConfig};
use pgprism_pg::Dsn;
use pgprism_sink::Projector;
use pgprism_sink::drive::{DriveOptions, drive};
use tokio::sync::watch;

const SCHEMA: &str = "
CREATE TABLE events (id bigint PRIMARY KEY, v int NOT NULL);
CREATE TABLE events_copy (id bigint PRIMARY KEY, v int NOT NULL);
-- Every flush into the copy takes at least 50 ms: far longer than one transaction of the
-- writer below, on any machine.
CREATE FUNCTION slow_flush() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$;
CREATE TRIGGER slow_flush AFTER INSERT OR UPDATE OR DELETE ON events_copy
  FOR EACH STATEMENT EXECUTE FUNCTION slow_flush();
";

const MIRROR: &str = r#"
name = "events"
kind = "mirror"
source = "public.events"
[[targets]]
sink = "pg"
table = "public.events_copy"
"#;

/// One flush as the drive loop reported it.
struct Seen {
    changes: usize,
    took: Duration,
    /// The lag right after the flush: the oldest change received and not yet durable.
    lag: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_small_transactions_are_grouped_and_lag_stays_bounded() {
    let env = Env::new(SCHEMA);
    // Only the writer's table: the copy's own rows (the same database) would otherwise
    // come back through the slot, and a flush of nothing but those — no row to write,
    // done in microseconds — would count as a flush of the writer's transactions.
    env.sql("DROP PUBLICATION pgprism; CREATE PUBLICATION pgprism FOR TABLE events");
    let cfg = env.config(vec![projection(MIRROR)], 1);
    let mut projector = Projector::start(&cfg).await.expect("projector starts");
    let clock = projector.lag_clock();
    let mut stream_cfg = StreamConfig::new(Dsn::parse(&env.dsn).unwrap(), "pgprism", "pgprism");
    stream_cfg.start_lsn = projector.resume_lsn();
    let mut stream = ReplicationStream::open(stream_cfg).await.expect("stream");

    // The writer: one row per transaction, as fast as one session commits, until the
    // pipeline has flushed 40 times while it wrote.
    let writing = Arc::new(AtomicBool::new(true));
    let flushes_while_writing = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let client = env.client().await;
        let (writing, flushes) = (writing.clone(), flushes_while_writing.clone());
        tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO events VALUES ($1, $2)")
                .await
                .unwrap();
            let started = Instant::now();
            let mut n: i64 = 0;
            while flushes.load(Ordering::Relaxed) < 40 {
                n += 1;
                client.execute(&insert, &[&n, &(n as i32)]).await.unwrap();
            }
            writing.store(false, Ordering::Relaxed);
            (n, started.elapsed())
        })
    };

    let (stop_tx, mut stop) = watch::channel(false);
    let mut seen: Vec<Seen> = Vec::new();
    let driving = async {
        drive(
            &mut projector,
            &mut stream,
            &mut stop,
            &DriveOptions::default(),
            |r| {
                if r.changes > 0 && writing.load(Ordering::Relaxed) {
                    flushes_while_writing.fetch_add(1, Ordering::Relaxed);
                    seen.push(Seen {
                        changes: r.changes,
                        took: r.took,
                        lag: clock.lag(),
                    });
                }
            },
        )
        .await
    };
    let stopper = async {
        let (transactions, wrote_for) = writer.await.unwrap();
        // Then until the copy holds every row.
        let client = env.client().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n: i64 = client
                .query_one("SELECT count(*) FROM events_copy", &[])
                .await
                .unwrap()
                .get(0);
            if n == transactions {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the copy holds {n} of {transactions} rows after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_tx.send_replace(true);
        (transactions, wrote_for)
    };
    let (driven, (transactions, wrote_for)) = tokio::join!(driving, stopper);
    driven.expect("pipeline runs");

    let flushes = seen.len();
    let interval = wrote_for / transactions as u32;
    let mean_took = seen.iter().map(|s| s.took).sum::<Duration>() / flushes as u32;
    let max_took = seen.iter().map(|s| s.took).max().unwrap();
    let max_lag = seen.iter().map(|s| s.lag).max().unwrap();
    let per_flush = seen.iter().map(|s| s.changes).sum::<usize>() as f64 / flushes as f64;
    eprintln!(
        "{transactions} transactions in {wrote_for:?} (one per {interval:?}); {flushes} flushes while writing, \
         {mean_took:?} mean, {max_took:?} max; {per_flush:.1} transactions per flush; lag after a flush at most {max_lag:?}"
    );
    // The situation under test: transactions arrive several times faster than a flush.
    assert!(
        interval * 4 < mean_took,
        "the writer was too slow for the test (one transaction per {interval:?}, a flush takes {mean_took:?})"
    );
    // Group commit: a flush carries what arrived during the one before, not one
    // transaction each.
    assert!(
        per_flush >= 4.0,
        "{per_flush:.1} transactions per flush with one arriving every {interval:?} and flushes of {mean_took:?}"
    );
    assert!(
        seen.iter().any(|s| s.changes > 1),
        "every flush held one transaction"
    );
    // Bounded lag: what waits after a flush arrived during it (one flush behind), where
    // one flush per transaction would fall further behind with every flush.
    assert!(
        max_lag <= max_took * 5,
        "the lag after a flush reached {max_lag:?} with flushes of at most {max_took:?}"
    );
    let source = env.rows("SELECT id::text, v::text FROM events").await;
    let copy = env.rows("SELECT id::text, v::text FROM events_copy").await;
    common::assert_same(&copy, &source, "events_copy");
    stream
        .shutdown(Duration::from_secs(5))
        .await
        .expect("clean stop");
}
