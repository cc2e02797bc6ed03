//! The seam between a lane and the place it writes to: [`TargetWriter`], implemented by
//! the Postgres writer ([`PgWriter`]: sessions, table, fence) and the Redis one
//! ([`RedisWriter`]); [`Writer`] is either.

use std::sync::Arc;

use pgprism_leader::Offset;
use pgprism_pg::Dsn;
use tokio_postgres::Client;

use super::pg::PgWriter;
use super::{Failure, Logic};
use crate::batch::{Batch, Key, Shape};
use crate::dead_letter::DeadLetters;
use crate::error::SinkError;
use crate::redis::RedisWriter;

/// What a flush's write left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Committed with its offset: nothing of it is delivered again.
    Durable,
    /// Accepted into a transaction still open (a replay's, until it reaches the old
    /// offset): a crash loses it and the stream delivers it again.
    Accepted,
}

/// One flush's work for a target.
pub(crate) struct Work<'a> {
    /// The offset the flush covers.
    pub(crate) to: Offset,
    /// The rows' shape (dead-letter requests need it even without a batch).
    pub(crate) shape: Option<&'a Arc<Shape>>,
    /// The rows to write, if any.
    pub(crate) batch: Option<&'a Batch>,
    /// Keys whose recompute failed: dead letters.
    pub(crate) recompute_failed: &'a [Failure],
    /// The backfill's position after this flush's chunk, committed with it.
    pub(crate) backfill_state: Option<&'a str>,
    /// Inside a replay, before its end: keep the transaction open (Postgres).
    pub(crate) in_replay: bool,
}

/// What a write needs of its lane.
pub(crate) struct LaneParts<'a> {
    pub(crate) name: &'a str,
    pub(crate) dead: &'a DeadLetters,
    /// For `pgprism dlq retry` requests of a query projection (recomputed).
    pub(crate) logic: &'a mut Logic,
    /// The source session (Redis targets keep their dead letters there).
    pub(crate) source: &'a mut Option<Client>,
    pub(crate) source_dsn: &'a Dsn,
}

/// What a lane asks of its target besides applying batches.
pub(crate) trait TargetWriter {
    /// Where a replay's single transaction ends (Postgres, after a rewind), if one is due.
    fn replay_until(&self) -> Option<Offset>;
    /// Whether a replay is applied in one transaction until it reaches the old offset
    /// (Postgres: readers never see older rows) rather than guarded per key (Redis).
    fn replays_in_one_transaction(&self) -> bool;
    /// Whether the target answers (a lane set aside probes before rejoining).
    async fn probe(&mut self) -> bool;
    /// Open again a session the server closed (failures are logged: the next write
    /// reports them).
    async fn reconnect_if_closed(&mut self, target: &str);
    /// Move the stored offset back to `to` under the fence (a replay).
    async fn rewind(&mut self, target: &str, to: Offset) -> Result<(), SinkError>;
    /// Every key the target holds, as `shape` names them.
    async fn existing_keys(&mut self, target: &str, shape: &Shape) -> Result<Vec<Key>, SinkError>;
    /// Whether the target can take rows of `shape` (a source's columns changed).
    fn check_shape(&self, shape: &Shape) -> Result<(), SinkError>;
    /// A write waited too long for a lock: clear what may hold it (Postgres: a deposed
    /// leader's session frozen in a transaction) before the retry.
    async fn contended(&mut self, target: &str);
    /// Write one flush: the `pgprism dlq` requests waiting, the batch (rows the target
    /// rejects become dead letters), the failed recomputes' dead letters, then the fenced
    /// offset — all or nothing; (rows written, dead letters, durability).
    async fn apply(
        &mut self,
        lane: LaneParts<'_>,
        work: Work<'_>,
    ) -> Result<(u64, u64, Durability), SinkError>;
}

/// Where a lane writes.
pub(crate) enum Writer {
    Postgres(Box<PgWriter>),
    Redis(Box<RedisWriter>),
}

impl TargetWriter for Writer {
    fn replay_until(&self) -> Option<Offset> {
        match self {
            Writer::Postgres(w) => w.replay_until(),
            Writer::Redis(w) => w.replay_until(),
        }
    }

    fn replays_in_one_transaction(&self) -> bool {
        match self {
            Writer::Postgres(w) => w.replays_in_one_transaction(),
            Writer::Redis(w) => w.replays_in_one_transaction(),
        }
    }

    async fn probe(&mut self) -> bool {
        match self {
            Writer::Postgres(w) => w.probe().await,
            Writer::Redis(w) => w.probe().await,
        }
    }

    async fn reconnect_if_closed(&mut self, target: &str) {
        match self {
            Writer::Postgres(w) => w.reconnect_if_closed(target).await,
            Writer::Redis(w) => w.reconnect_if_closed(target).await,
        }
    }

    async fn rewind(&mut self, target: &str, to: Offset) -> Result<(), SinkError> {
        match self {
            Writer::Postgres(w) => w.rewind(target, to).await,
            Writer::Redis(w) => TargetWriter::rewind(&mut **w, target, to).await,
        }
    }

    async fn existing_keys(&mut self, target: &str, shape: &Shape) -> Result<Vec<Key>, SinkError> {
        match self {
            Writer::Postgres(w) => w.existing_keys(target, shape).await,
            Writer::Redis(w) => TargetWriter::existing_keys(&mut **w, target, shape).await,
        }
    }

    async fn apply(
        &mut self,
        lane: LaneParts<'_>,
        work: Work<'_>,
    ) -> Result<(u64, u64, Durability), SinkError> {
        match self {
            Writer::Postgres(w) => w.apply(lane, work).await,
            Writer::Redis(w) => w.apply(lane, work).await,
        }
    }

    fn check_shape(&self, shape: &Shape) -> Result<(), SinkError> {
        match self {
            Writer::Postgres(w) => w.check_shape(shape),
            Writer::Redis(w) => w.check_shape(shape),
        }
    }

    async fn contended(&mut self, target: &str) {
        match self {
            Writer::Postgres(w) => w.contended(target).await,
            Writer::Redis(w) => w.contended(target).await,
        }
    }
}

/// Connect a SQL session (TLS as the DSN asks, the text formats pgprism reads and
/// writes) for `what`, a target or the source.
pub(crate) async fn connect(dsn: &Dsn, what: &str) -> Result<Client, SinkError> {
    let (client, _connection) =
        pgprism_pg::connect(dsn)
            .await
            .map_err(|source| SinkError::Connect {
                target: what.to_owned(),
                server: dsn.target(),
                source,
            })?;
    Ok(client)
}

/// [`connect`] for a writer's session, with its server process id.
pub(crate) async fn connect_writer(dsn: &Dsn, what: &str) -> Result<(Client, i32), SinkError> {
    let client = connect(dsn, what).await?;
    let pid = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(SinkError::pg(what, "reading the session's process id"))?
        .get(0);
    Ok((client, pid))
}

#[cfg(test)]
mod tests {
    //! The seam against real servers: each writer probes, reconnects after the server
    //! ends its session, rewinds under the fence, and lists its keys.

    use std::time::Duration;

    use bytes::Bytes;
    use pgprism_decoder::Lsn;
    use pgprism_leader::{Epoch, RedisFence};
    use pgprism_testkit::{PgServer, RedisServer};

    use super::*;
    use crate::batch::ShapeColumn;
    use crate::lane::connect_writer;
    use crate::postgres::PgTable;
    use crate::spec::TargetSpec;
    use pgprism_leader::PgFence;

    fn shape() -> Shape {
        Shape {
            columns: vec![
                ShapeColumn {
                    name: "id".to_owned(),
                    type_oid: 23,
                },
                ShapeColumn {
                    name: "v".to_owned(),
                    type_oid: 25,
                },
            ],
            key: vec![0],
        }
    }

    fn keys(mut keys: Vec<Key>) -> Vec<Key> {
        keys.sort();
        keys
    }

    fn key(id: &str) -> Key {
        vec![Bytes::copy_from_slice(id.as_bytes())]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_writer_probes_reconnects_rewinds_under_the_fence_and_lists_keys() {
        let pg = PgServer::start().unwrap();
        let (db, dsn) = pg.fresh_database().unwrap();
        pg.psql(
            &db,
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
        )
        .unwrap();
        let other = pg.client(&db).await.unwrap();
        let dsn = Dsn::parse(&dsn).unwrap().named("pgprism sink t.pg");
        let (client, pid) = connect_writer(&dsn, "t.pg").await.unwrap();
        let table = PgTable::load(&client, "t.pg", "public", "t").await.unwrap();
        let (fence, _) = PgFence::stamp_new(
            &client,
            "seam",
            "t.pg",
            Epoch(1),
            Duration::from_secs(1),
            None,
        )
        .await
        .unwrap();
        let mut w = PgWriter {
            dsn,
            client: Arc::new(client),
            table: Arc::new(table),
            fence,
            replay_flushes: 0,
            in_tx: false,
            alt: None,
            sessions: 1,
            pid,
            takeover_after: Duration::from_secs(1),
        };
        assert!(w.probe().await);
        assert!(w.replays_in_one_transaction());
        assert_eq!(
            keys(w.existing_keys("t.pg", &shape()).await.unwrap()),
            [key("1"), key("2")]
        );

        // The server ends the session: the probe says so, a reconnect mends it.
        other
            .execute("SELECT pg_terminate_backend($1)", &[&w.pid])
            .await
            .unwrap();
        assert!(!w.probe().await, "the probe saw the ended session");
        // The connection's task notices the end a moment after the failed query.
        for _ in 0..500 {
            if w.client.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        w.reconnect_if_closed("t.pg").await;
        assert_ne!(w.pid, pid, "a new session");
        assert!(w.probe().await);

        // Forward, then back by a rewind; a newer epoch fences the next rewind.
        w.client.batch_execute("BEGIN").await.unwrap();
        w.fence
            .commit_offset(&*w.client, Offset::after_transaction(Lsn(0x200)))
            .await
            .unwrap();
        w.client.batch_execute("COMMIT").await.unwrap();
        w.rewind("t.pg", Offset::after_transaction(Lsn(0x100)))
            .await
            .unwrap();
        let stored = PgFence::read(&other, "seam", "t.pg")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.resume_lsn, Lsn(0x100));
        PgFence::stamp_new(
            &other,
            "seam",
            "t.pg",
            Epoch(2),
            Duration::from_secs(1),
            None,
        )
        .await
        .unwrap();
        let err = w
            .rewind("t.pg", Offset::after_transaction(Lsn(0x50)))
            .await
            .unwrap_err();
        assert!(err.is_fenced(), "{err}");
        assert!(
            w.probe().await,
            "the failed rewind left no transaction open"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redis_writer_probes_rewinds_under_the_fence_and_lists_keys() {
        let redis = RedisServer::start().unwrap();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for id in ["1", "2"] {
            let _: () = redis::cmd("HSET")
                .arg(format!("t:{id}"))
                .arg("id")
                .arg(id)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let spec = TargetSpec {
            sink: "cache".to_owned(),
            name: None,
            table: None,
            key: Some("t:{id}".to_owned()),
            format: None,
            ttl: None,
            ttl_jitter: None,
            tombstone_ttl: None,
        };
        let (mut w, _) = RedisWriter::connect("seam", "t.cache", client, &spec, Epoch(1), None)
            .await
            .unwrap();
        assert!(TargetWriter::probe(&mut w).await);
        assert!(!w.replays_in_one_transaction());
        assert_eq!(w.replay_until(), None);
        assert_eq!(
            keys(
                TargetWriter::existing_keys(&mut w, "t.cache", &shape())
                    .await
                    .unwrap()
            ),
            [key("1"), key("2")]
        );
        w.commit(Offset::after_transaction(Lsn(0x200)))
            .await
            .unwrap();
        TargetWriter::rewind(&mut w, "t.cache", Offset::after_transaction(Lsn(0x100)))
            .await
            .unwrap();
        let stored = RedisFence::read(&mut conn, "seam", "t.cache")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.resume_lsn, Lsn(0x100));
        RedisFence::stamp_new(&mut conn, "seam", "t.cache", Epoch(2), None)
            .await
            .unwrap();
        let err = TargetWriter::rewind(&mut w, "t.cache", Offset::after_transaction(Lsn(0x50)))
            .await
            .unwrap_err();
        assert!(err.is_fenced(), "{err}");
    }
}
