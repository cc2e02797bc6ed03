//! Taking the slot over from a frozen walsender, and refusing replays the slot cannot serve.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgprism_decoder::Lsn;
use pgprism_leader::LeaderError;
use pgprism_leader::slot::{check_replay, oldest_replayable, take_over};
use pgprism_testkit::{ChildGuard, PgServer, Signal};

fn active_pid(pg: &PgServer, db: &str) -> String {
    pg.psql(
        db,
        "SELECT coalesce(active_pid::text, '-') FROM pg_replication_slots WHERE slot_name = 's'",
    )
    .unwrap()
    .trim()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_held_by_a_frozen_walsender_is_taken_over_after_the_delay() {
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t;
         SELECT pg_create_logical_replication_slot('s', 'pgoutput');",
    )
    .unwrap();
    // The old leader's consumer, frozen: its walsender keeps the slot active.
    let holder = ChildGuard::new(
        Command::new(pgprism_testkit::bin_dir().unwrap().join("pg_recvlogical"))
            .args(["-d", &dsn, "--slot", "s", "--start", "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o", "publication_names=p"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while active_pid(&pg, &db) == "-" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pg_recvlogical never took the slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held_by = active_pid(&pg, &db);
    holder.signal(Signal::Stop).unwrap();

    let client = pg.client(&db).await.unwrap();
    let started = Instant::now();
    let state = tokio::time::timeout(
        Duration::from_secs(30),
        take_over(
            &client,
            "s",
            Duration::from_secs(1),
            Duration::from_millis(50),
        ),
    )
    .await
    .expect("the frozen walsender was never terminated")
    .unwrap()
    .expect("the slot exists");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "terminated the holder before the delay: {took:?}"
    );
    assert_eq!(
        active_pid(&pg, &db),
        "-",
        "the slot is free for the new leader"
    );
    // A terminated walsender releases the slot on its way out, a moment before it leaves
    // pg_stat_activity.
    let start = Instant::now();
    loop {
        let gone = pg
            .psql(
                &db,
                &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {held_by}"),
            )
            .unwrap();
        if gone.trim() == "0" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the old walsender was terminated: {gone}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state.wal_status.as_deref(), Some("reserved"));
    assert!(
        take_over(
            &client,
            "missing",
            Duration::ZERO,
            Duration::from_millis(10)
        )
        .await
        .unwrap()
        .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_before_the_slot_is_refused_with_the_oldest_replayable_lsn() {
    let pg = PgServer::start().unwrap();
    let (db, _) = pg.fresh_database().unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t;
         SELECT pg_create_logical_replication_slot('s', 'pgoutput');",
    )
    .unwrap();
    let before: Lsn = pg
        .psql(&db, "SELECT pg_current_wal_lsn()")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    pg.psql(&db, "INSERT INTO t SELECT generate_series(1, 100)")
        .unwrap();
    let now: Lsn = pg
        .psql(&db, "SELECT pg_current_wal_lsn()")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    pg.psql(
        &db,
        &format!("SELECT pg_replication_slot_advance('s', '{now}')"),
    )
    .unwrap();

    let client = pg.client(&db).await.unwrap();
    let oldest = oldest_replayable(&client, "s").await.unwrap().unwrap();
    assert_eq!(oldest, now);
    check_replay("s", now, oldest).unwrap();
    let err = check_replay("s", before, oldest).unwrap_err();
    assert!(matches!(err, LeaderError::NotReplayable { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&before.to_string()) && msg.contains(&oldest.to_string()),
        "{msg}"
    );
    assert_eq!(oldest_replayable(&client, "nope").await.unwrap(), None);
}
