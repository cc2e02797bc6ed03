//! The replication stream against a real Postgres: backfill under the exported snapshot,
//! and a walsender killed under a running stream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgprism_decoder::pgoutput::{TupleValue, Value};
use pgprism_decoder::stream::{
    ChangeKind, ReplicationStream, SlotCreation, StreamConfig, StreamEvent,
};
use pgprism_pg::Dsn;
use pgprism_testkit::PgServer;

/// The `id` of every inserted row in `chunk`, with its commit LSN.
fn inserted_ids(ev: &StreamEvent, out: &mut Vec<(u64, i64)>) {
    if let StreamEvent::Chunk(chunk) = ev {
        for change in &chunk.changes {
            if let ChangeKind::Insert { relation, new } = &change.kind {
                let TupleValue::Text(_) = &new[0] else {
                    panic!("id not text")
                };
                let Some(Value::Int8(id)) =
                    Value::from_tuple(relation.columns[0].type_oid, &new[0]).unwrap()
                else {
                    panic!("id is not int8")
                };
                out.push((chunk.txn.commit_lsn.0, id));
            }
        }
    }
}

/// Keep inserting one row per transaction until told to stop.
fn writer(pg: &PgServer, db: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let dsn = pg.dsn(db);
    let psql = pgprism_testkit::bin_dir().unwrap().join("psql");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let _ = std::process::Command::new(&psql)
                .args([
                    "-X",
                    "-q",
                    "-d",
                    &dsn,
                    "-c",
                    "INSERT INTO t (note) VALUES ('w')",
                ])
                .output();
        }
    })
}

/// Stream until `done`; acknowledge the end of every `ack_every`-th transaction only.
async fn stream_until(
    stream: &mut ReplicationStream,
    ids: &mut Vec<(u64, i64)>,
    ack_every: usize,
    mut done: impl FnMut(&[(u64, i64)]) -> bool,
) {
    let mut ended = 0usize;
    let acker = stream.acker();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(ids) {
        assert!(
            Instant::now() < deadline,
            "timed out with {} rows",
            ids.len()
        );
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("stream stalled")
            .expect("stream failed");
        inserted_ids(&ev, ids);
        if let StreamEvent::Chunk(c) = &ev
            && let Some(end) = c.end
        {
            ended += 1;
            if ended.is_multiple_of(ack_every) {
                acker.ack(end.end_lsn);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_under_the_exported_snapshot_plus_stream_is_every_row_once() {
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t (id bigserial PRIMARY KEY, note text);
         INSERT INTO t (note) SELECT 'seed' FROM generate_series(1, 5000);
         CREATE PUBLICATION p FOR TABLE t;",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pg, &db, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut cfg = StreamConfig::new(Dsn::parse(&dsn).unwrap(), "snap", "p");
    cfg.create_slot = Some(SlotCreation { temporary: false });
    let backfilled = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let sink = backfilled.clone();
    let client = pg.client(&db).await.unwrap();
    let mut stream = ReplicationStream::open_with_backfill(
        cfg,
        Box::new(move |snapshot| {
            Box::pin(async move {
                client
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                // Slow enough that the writer commits more rows meanwhile.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let rows = client
                    .query("SELECT id FROM t", &[])
                    .await
                    .map_err(|e| e.to_string())?;
                client.batch_execute("COMMIT").await.map_err(|e| e.to_string())?;
                sink.lock().unwrap().extend(rows.iter().map(|r| r.get::<_, i64>(0)));
                Ok(())
            })
        }),
    )
    .await
    .unwrap();
    assert!(stream.info().slot_created);
    assert!(stream.info().snapshot.is_some());

    tokio::time::sleep(Duration::from_millis(500)).await;
    // The writer stops once it has committed after the snapshot too (rows the back-fill
    // did not see), however slow a loaded machine makes it.
    let backfilled: Vec<i64> = backfilled.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: usize = pg
            .psql(&db, "SELECT count(*) FROM t")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if rows > backfilled.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writer committed nothing after the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let all: BTreeSet<i64> = pg
        .psql(&db, "SELECT id FROM t")
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let mut streamed = Vec::new();
    stream_until(&mut stream, &mut streamed, 1, |s| {
        s.len() + backfilled.len() >= all.len()
    })
    .await;

    let streamed_ids: Vec<i64> = streamed.iter().map(|s| s.1).collect();
    let mut union: Vec<i64> = backfilled.iter().chain(&streamed_ids).copied().collect();
    union.sort();
    let unique: BTreeSet<i64> = union.iter().copied().collect();
    assert_eq!(
        union.len(),
        unique.len(),
        "a row was both back-filled and streamed"
    );
    assert_eq!(unique, all, "back-fill + stream must be exactly the table");
    assert!(
        backfilled.len() >= 5000 && !streamed_ids.is_empty(),
        "{} / {}",
        backfilled.len(),
        streamed_ids.len()
    );
    stream.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_walsender_is_survived_without_repeats() {
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t (id bigserial PRIMARY KEY, note text);
         CREATE PUBLICATION p FOR TABLE t;
         SELECT pg_create_logical_replication_slot('s', 'pgoutput');",
    )
    .unwrap();
    // The consumer acknowledges only every 37th transaction, so after each kill Postgres
    // re-sends transactions the stream already handed on: those must not repeat.
    let cfg = StreamConfig::new(Dsn::parse(&dsn).unwrap(), "s", "p");
    let mut stream = ReplicationStream::open(cfg).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&pg, &db, stop.clone());
    let mut got = Vec::new();
    for round in 0..3 {
        let target = 100 * (round + 1);
        stream_until(&mut stream, &mut got, 37, |g| g.len() >= target).await;
        // Kill our walsender (SQLSTATE 57P01 on the stream).
        let killed = pg
            .psql(
                &db,
                "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = 's' AND active_pid IS NOT NULL",
            )
            .unwrap();
        assert_eq!(killed.trim(), "1");
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let all: Vec<i64> = pg
        .psql(&db, "SELECT id FROM t ORDER BY id")
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    stream_until(&mut stream, &mut got, 37, |g| g.len() >= all.len()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<i64> = got.iter().map(|g| g.1).collect();
    ids.sort();
    assert_eq!(
        ids, all,
        "every committed row once, in spite of three killed sessions"
    );
    let acked = stream.shutdown(Duration::from_secs(5)).await.unwrap();
    let confirmed = pg
        .psql(
            &db,
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 's'",
        )
        .unwrap();
    assert!(
        confirmed.trim().parse::<pgprism_decoder::Lsn>().unwrap() >= acked,
        "the clean stop must leave the slot at the last acknowledgement ({acked}), found {confirmed}"
    );
}
