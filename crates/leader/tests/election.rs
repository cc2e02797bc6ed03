//! Election, takeover and fencing against a real Postgres.

use std::time::{Duration, Instant};

use pgprism_decoder::Lsn;
use pgprism_leader::{
    Election, Epoch, LeaderConfig, LeaderError, Leadership, Offset, PgFence, Via,
};
use pgprism_pg::Dsn;
use pgprism_testkit::PgServer;
use tokio::sync::watch;

/// The takeover delay of these tests.
const TAKEOVER: Duration = Duration::from_secs(1);
/// How long a step may take on a loaded machine before a test gives up.
const PATIENCE: Duration = Duration::from_secs(30);

fn fast(pipeline: &str, replica: &str) -> LeaderConfig {
    let mut cfg = LeaderConfig::new(pipeline, replica);
    cfg.retry_interval = Duration::from_millis(100);
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg.takeover_after = TAKEOVER;
    cfg
}

/// Start a campaign in the background; its leadership (if any) arrives on the channel.
fn campaign(
    cfg: LeaderConfig,
    dsn: &str,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<Option<Leadership>, LeaderError>>,
) {
    let election = Election::new(cfg, Dsn::parse(dsn).unwrap());
    let (stop, rx) = watch::channel(false);
    (
        stop,
        tokio::spawn(async move { election.campaign(rx).await }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_leads_and_a_standby_takes_over_on_release() {
    let pg = PgServer::start().unwrap();
    let (_, dsn) = pg.fresh_database().unwrap();
    let mut tasks: Vec<_> = (0..3)
        .map(|i| campaign(fast("orders", &format!("replica-{i}")), &dsn))
        .collect();
    // Wait for exactly one to finish its campaign (as leader).
    let start = Instant::now();
    let leader_idx = loop {
        let done: Vec<usize> = (0..tasks.len())
            .filter(|&i| tasks[i].1.is_finished())
            .collect();
        assert!(done.len() <= 1, "two replicas lead at once: {done:?}");
        if let [i] = done[..] {
            // Give the others time to (wrongly) win too.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                (0..tasks.len())
                    .filter(|&j| tasks[j].1.is_finished())
                    .count()
                    == 1,
                "a second replica believes it leads"
            );
            break i;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "nobody leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (_, handle) = tasks.remove(leader_idx);
    let first = handle.await.unwrap().unwrap().expect("leadership");
    assert_eq!(first.epoch(), Epoch(1));
    let released = Instant::now();
    first.release().await;
    let winner = loop {
        if let Some(i) = (0..tasks.len()).find(|&i| tasks[i].1.is_finished()) {
            break i;
        }
        assert!(released.elapsed() < PATIENCE, "no takeover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (_, handle) = tasks.remove(winner);
    let second = handle.await.unwrap().unwrap().expect("leadership");
    assert_eq!(second.epoch(), Epoch(2), "a new leader gets a new epoch");
    // The released lock was taken as such: the heartbeat younger than the takeover delay,
    // nobody terminated (the way a frozen leader is replaced).
    let succession = second.succession();
    assert_eq!(succession.via, Via::Released, "{succession:?}");
    assert_eq!(
        succession.previous.as_deref(),
        Some(format!("replica-{leader_idx}").as_str())
    );
    for (stop, h) in tasks {
        stop.send_replace(true);
        assert!(h.await.unwrap().unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_learns_it_lost() {
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    // A leader whose heartbeat stops (as under SIGSTOP) while its session stays open.
    let mut frozen = fast("orders", "frozen");
    frozen.heartbeat_interval = Duration::from_secs(3600);
    let (_s, a) = campaign(frozen, &dsn);
    let mut a = a.await.unwrap().unwrap().unwrap();
    // The leader's heartbeats on the server's clock (the test's own could stall).
    let sql = pg.client(&db).await.unwrap();
    let heartbeat = async || -> f64 {
        sql.query_one(
            "SELECT extract(epoch FROM heartbeat_at)::float8 FROM pgprism.pipelines WHERE name = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    let frozen_at = heartbeat().await;
    let (_s2, b) = campaign(fast("orders", "standby"), &dsn);
    let b = tokio::time::timeout(PATIENCE, b)
        .await
        .expect("standby never took over")
        .unwrap()
        .unwrap()
        .unwrap();
    let stale_for = heartbeat().await - frozen_at;
    assert!(
        stale_for >= 0.9,
        "took over {stale_for:.3} s after the frozen leader's last heartbeat, before it was stale"
    );
    assert_eq!(b.epoch(), Epoch(2));
    assert_eq!(b.succession().via, Via::Replaced, "{:?}", b.succession());
    tokio::time::timeout(PATIENCE, a.lost())
        .await
        .expect("the replaced leader was not told it lost");
    assert!(a.is_lost());
    assert!(!b.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_write_to_a_sink() {
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    let sink = pg.client(&db).await.unwrap();
    sink.batch_execute("CREATE TABLE read_model (id int PRIMARY KEY, epoch bigint)")
        .await
        .unwrap();
    let old = pg.client(&db).await.unwrap();

    let (_s, a) = campaign(fast("orders", "a"), &dsn);
    let a = a.await.unwrap().unwrap().unwrap();
    let (fence_a, start) = PgFence::stamp(&old, "orders", "pg", a.epoch(), TAKEOVER)
        .await
        .unwrap();
    assert_eq!(start, Offset::default());
    // A writes a batch with its offset, fenced: lands.
    write_batch(&old, &fence_a, 1, Offset::after_transaction(Lsn(100)))
        .await
        .unwrap();

    // A is deposed (released here; frozen in the chaos tests) and B leads and stamps.
    a.release().await;
    let (_s2, b) = campaign(fast("orders", "b"), &dsn);
    let b = b.await.unwrap().unwrap().unwrap();
    let (fence_b, resume) = PgFence::stamp(&sink, "orders", "pg", b.epoch(), TAKEOVER)
        .await
        .unwrap();
    assert_eq!(
        resume,
        Offset::after_transaction(Lsn(100)),
        "B resumes after A's durable work"
    );
    write_batch(&sink, &fence_b, 2, Offset::after_transaction(Lsn(200)))
        .await
        .unwrap();

    // A wakes up and tries to write: fenced, rolled back, nothing of it lands.
    let err = write_batch(&old, &fence_a, 3, Offset::after_transaction(Lsn(300)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LeaderError::Fenced {
                ours: Epoch(1),
                current: Epoch(2),
                ..
            }
        ),
        "{err}"
    );
    let rows: Vec<(i32, i64)> = sink
        .query("SELECT id, epoch FROM read_model ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        [(1, 1), (2, 2)],
        "a write of the old epoch landed after the takeover"
    );
    assert_eq!(
        PgFence::read(&sink, "orders", "pg").await.unwrap(),
        Some(Offset::after_transaction(Lsn(200)))
    );
    // Stamping with the old epoch is refused too.
    assert!(matches!(
        PgFence::stamp(&old, "orders", "pg", Epoch(1), TAKEOVER).await,
        Err(LeaderError::Fenced { .. })
    ));
}

/// A sink batch: one row plus the offset, in one transaction.
async fn write_batch(
    client: &tokio_postgres::Client,
    fence: &PgFence,
    id: i32,
    to: Offset,
) -> Result<(), LeaderError> {
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO read_model VALUES ($1, $2)",
            &[&id, &fence.epoch().0],
        )
        .await
        .unwrap();
    match fence.commit_offset(client, to).await {
        Ok(()) => {
            client.batch_execute("COMMIT").await.unwrap();
            Ok(())
        }
        Err(e) => {
            client.batch_execute("ROLLBACK").await.unwrap();
            Err(e)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_only_move_forward_except_by_rewind() {
    let pg = PgServer::start().unwrap();
    let (db, _) = pg.fresh_database().unwrap();
    let c = pg.client(&db).await.unwrap();
    let (fence, _) = PgFence::stamp(&c, "p", "s", Epoch(1), TAKEOVER)
        .await
        .unwrap();
    let at = |lsn: u64, n: u64| Offset::inside_transaction(Lsn(lsn), n);
    fence.commit_offset(&c, at(100, 5)).await.unwrap();
    fence.commit_offset(&c, at(100, 5)).await.unwrap(); // the same position again is fine
    fence.commit_offset(&c, at(100, 9)).await.unwrap();
    fence
        .commit_offset(&c, Offset::after_transaction(Lsn(180)))
        .await
        .unwrap();
    for back in [at(100, 9), at(179, 1), Offset::after_transaction(Lsn(50))] {
        let err = fence.commit_offset(&c, back).await.unwrap_err();
        assert!(matches!(err, LeaderError::Backwards { .. }), "{err}");
    }
    assert_eq!(
        PgFence::read(&c, "p", "s").await.unwrap(),
        Some(Offset::after_transaction(Lsn(180)))
    );
    fence
        .rewind(&c, Offset::after_transaction(Lsn(50)))
        .await
        .unwrap();
    assert_eq!(
        PgFence::read(&c, "p", "s").await.unwrap(),
        Some(Offset::after_transaction(Lsn(50)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_pipeline_names_and_lock_key_collisions() {
    let pg = PgServer::start().unwrap();
    let (db, dsn) = pg.fresh_database().unwrap();
    let odd = "o'rders \"quoted\" ünï 名前; DROP TABLE x --";
    let (_s, a) = campaign(fast(odd, "r1"), &dsn);
    let a = a.await.unwrap().unwrap().unwrap();
    assert_eq!(a.epoch(), Epoch(1));
    let c = pg.client(&db).await.unwrap();
    let (fence, _) = PgFence::stamp(&c, odd, "sink \"x\"", a.epoch(), TAKEOVER)
        .await
        .unwrap();
    fence
        .commit_offset(&c, Offset::after_transaction(Lsn(7)))
        .await
        .unwrap();
    let stored: String = c
        .query_one(
            "SELECT leader FROM pgprism.pipelines WHERE name = $1",
            &[&odd],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "r1");

    // Another pipeline forced onto the same key is refused with a message naming both.
    let mut clash = fast("payments", "r2");
    clash.lock_key = Some(pgprism_leader::lock_key(odd));
    let (_s2, b) = campaign(clash, &dsn);
    let err = b.await.unwrap().unwrap_err();
    assert!(matches!(err, LeaderError::LockKeyCollision { .. }), "{err}");
    assert!(
        err.to_string().contains("payments") && err.to_string().contains("名前"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_inside_a_sink_transaction_does_not_block_the_next_one() {
    let pg = PgServer::start().unwrap();
    let (db, _) = pg.fresh_database().unwrap();
    let old = pg.client(&db).await.unwrap();
    let new = pg.client(&db).await.unwrap();
    let (fence_a, _) = PgFence::stamp(&old, "p", "s", Epoch(1), TAKEOVER)
        .await
        .unwrap();
    // A updates the offset and freezes before COMMIT: it holds the row lock.
    old.batch_execute("BEGIN").await.unwrap();
    fence_a
        .commit_offset(&old, Offset::after_transaction(Lsn(10)))
        .await
        .unwrap();

    let started = Instant::now();
    let (_, resume) = tokio::time::timeout(
        Duration::from_secs(10),
        PgFence::stamp(&new, "p", "s", Epoch(2), TAKEOVER),
    )
    .await
    .expect("the new leader's stamp waited forever behind the frozen one")
    .unwrap();
    assert!(
        started.elapsed() >= TAKEOVER,
        "terminated a holder before the takeover delay"
    );
    assert_eq!(
        resume,
        Offset::default(),
        "the frozen, uncommitted batch did not land"
    );
    assert!(
        old.batch_execute("COMMIT").await.is_err(),
        "the frozen session was ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_epoch_never_stamps_over_a_newer_one() {
    let pg = PgServer::start().unwrap();
    let (db, _) = pg.fresh_database().unwrap();
    let a = pg.client(&db).await.unwrap();
    let b = pg.client(&db).await.unwrap();
    let (fence_b, _) = PgFence::stamp(&b, "p", "s", Epoch(2), TAKEOVER)
        .await
        .unwrap();
    // B holds the row while committing progress; A (older) stamps meanwhile.
    b.batch_execute("BEGIN").await.unwrap();
    fence_b
        .commit_offset(&b, Offset::after_transaction(Lsn(100)))
        .await
        .unwrap();
    let stamp_a = tokio::spawn(async move {
        PgFence::stamp(&a, "p", "s", Epoch(1), Duration::from_secs(30)).await
    });
    // B commits once A's stamp waits for the row, not after a guess at how long that takes.
    let watcher = pg.client(&db).await.unwrap();
    let started = Instant::now();
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A's stamp never waited for B's row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.batch_execute("COMMIT").await.unwrap();
    let err = stamp_a.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            LeaderError::Fenced {
                current: Epoch(2),
                ..
            }
        ),
        "{err}"
    );
}
