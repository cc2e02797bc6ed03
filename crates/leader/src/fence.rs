//! The offsets store of a Postgres sink and the fence every sink commit goes through.
//!
//! Contract for sinks: apply a batch and call [`PgFence::commit_offset`] in the **same**
//! transaction, then commit. If `commit_offset` fails, roll back: with
//! [`LeaderError::Fenced`] a newer leader owns the sink and this replica must step down.
//!
//! Why it is safe: a new leader [stamps](PgFence::stamp) its epoch on the offset row
//! before it reads the offset. An old leader's commit updates the row only
//! `WHERE epoch <= old`: if it runs after the stamp it matches nothing and rolls back; if
//! it runs before, it is ordinary progress that the new leader then reads and resumes
//! after; if it runs concurrently, the row lock orders the two and Postgres re-checks the
//! `WHERE` against the stamped row. No write of an old epoch can land after the stamp.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use pgprism_decoder::Lsn;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient};

use crate::error::position;
use crate::{Epoch, LeaderError, schema};

/// A durable position in a sink. Ordered: offsets only grow (except by a replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Offset {
    /// With `changes_done == 0`: the end of the last whole transaction applied. Otherwise
    /// the commit LSN of a transaction applied in chunks.
    pub resume_lsn: Lsn,
    /// How many changes of the transaction at `resume_lsn` are durable (0: none pending).
    pub changes_done: u64,
}

impl Offset {
    /// Everything up to the end of a whole transaction.
    pub fn after_transaction(end_lsn: Lsn) -> Offset {
        Offset {
            resume_lsn: end_lsn,
            changes_done: 0,
        }
    }

    /// The first `changes` changes of the transaction committed at `commit_lsn`.
    pub fn inside_transaction(commit_lsn: Lsn, changes: u64) -> Offset {
        Offset {
            resume_lsn: commit_lsn,
            changes_done: changes,
        }
    }
}

/// How long one stamping attempt waits for the offset row's lock.
const STAMP_LOCK_WAIT: Duration = Duration::from_millis(250);

/// Terminate sessions that have sat idle inside a transaction touching the offsets table
/// for `at_least`: a leader frozen between its fenced update and its commit.
async fn terminate_idle_holders(client: &Client, at_least: Duration) -> Result<(), LeaderError> {
    let pids = terminate_idle_in_transaction(client, "pgprism.offsets", None, &[], at_least)
        .await
        .map_err(LeaderError::db(
            "terminating a frozen holder of the offset row",
        ))?;
    for pid in pids {
        tracing::warn!(pid, "terminated a session frozen inside a sink transaction");
    }
    Ok(())
}

/// Terminate the sink sessions of a deposed leader that froze inside a transaction
/// holding locks on `table` (a quoted name): sessions named `application_name` (the
/// writer's own name), not among `ours`, idle inside a transaction for `at_least` (a live
/// writer never is: it sends its statements back to back), with a lock on `table`. A
/// leader frozen after writing rows but before its offset update blocks the next
/// leader's writes to those rows for as long as it stays frozen — for ever, if its
/// machine is suspended — since its session looks alive to the server. The terminated
/// pids are returned.
pub async fn terminate_frozen_writers(
    client: &Client,
    application_name: &str,
    table: &str,
    ours: &[i32],
    at_least: Duration,
) -> Result<Vec<i32>, LeaderError> {
    let pids = terminate_idle_in_transaction(client, table, Some(application_name), ours, at_least)
        .await
        .map_err(LeaderError::db("terminating a frozen writer of the table"))?;
    for pid in &pids {
        tracing::warn!(
            pid,
            table,
            "terminated a deposed leader's session frozen inside a sink transaction"
        );
    }
    Ok(pids)
}

/// Terminate the sessions of this database (other than this one and `ours`, named
/// `application_name` if given) that have sat idle inside a transaction for `at_least`
/// holding a lock on `relation`; their pids.
async fn terminate_idle_in_transaction(
    client: &Client,
    relation: &str,
    application_name: Option<&str>,
    ours: &[i32],
    at_least: Duration,
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.pid, pg_terminate_backend(a.pid) FROM pg_stat_activity a
              WHERE a.pid <> pg_backend_pid() AND a.pid <> ALL($1::int4[])
                AND a.datname = current_database()
                AND ($2::text IS NULL OR a.application_name = $2)
                AND a.state IN ('idle in transaction', 'idle in transaction (aborted)')
                AND a.state_change < clock_timestamp() - make_interval(secs => $3)
                AND EXISTS (SELECT 1 FROM pg_locks l
                             WHERE l.pid = a.pid AND l.relation = to_regclass($4))",
            &[&ours, &application_name, &at_least.as_secs_f64(), &relation],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether an offset update may move the offset backwards.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Forward,
    Any,
}

/// What a stamp reads back: the offset, a replay's target position if one is open, and
/// the backfill state.
type StampedRow = (String, i64, Option<(String, i64)>, Option<String>);

/// One leader's handle on one sink's offset row.
#[derive(Debug, Clone)]
pub struct PgFence {
    pipeline: String,
    sink: String,
    epoch: Epoch,
    replay_until: Option<Offset>,
    backfill: Option<String>,
}

fn lsn_text(lsn: Lsn) -> String {
    lsn.to_string()
}

fn changes_param(sink: &str, n: u64) -> Result<i64, LeaderError> {
    i64::try_from(n).map_err(|_| LeaderError::Corrupt {
        sink: sink.to_owned(),
        detail: format!("change count {n} out of range"),
    })
}

fn read_offset(sink: &str, lsn: &str, changes: i64) -> Result<Offset, LeaderError> {
    let corrupt = |detail: String| LeaderError::Corrupt {
        sink: sink.to_owned(),
        detail,
    };
    Ok(Offset {
        resume_lsn: lsn.parse().map_err(|e| corrupt(format!("{e}")))?,
        changes_done: u64::try_from(changes)
            .map_err(|_| corrupt(format!("changes_done {changes}")))?,
    })
}

impl PgFence {
    /// Take over a sink for `epoch`: create the offsets table if missing, stamp the epoch
    /// on the sink's row (creating it at `0/0`), and return the durable offset to resume
    /// from. Fails with [`LeaderError::Fenced`] if a newer epoch already stamped it.
    ///
    /// A deposed leader frozen inside a sink transaction holds the offset row's lock; once
    /// the stamp has waited `takeover_after` for it, sessions idle in a transaction on the
    /// offsets table for that long are terminated (their commit would be fenced anyway).
    pub async fn stamp(
        client: &Client,
        pipeline: &str,
        sink: &str,
        epoch: Epoch,
        takeover_after: Duration,
    ) -> Result<(PgFence, Offset), LeaderError> {
        Self::stamp_new(client, pipeline, sink, epoch, takeover_after, None).await
    }

    /// [`PgFence::stamp`]; a row created now starts with `backfill` as its backfill state
    /// (a target new to the pipeline loads the rows that exist already). The state read
    /// back is [`PgFence::backfill`].
    pub async fn stamp_new(
        client: &Client,
        pipeline: &str,
        sink: &str,
        epoch: Epoch,
        takeover_after: Duration,
        backfill: Option<&str>,
    ) -> Result<(PgFence, Offset), LeaderError> {
        schema::ensure_sink(client).await?;
        let started = Instant::now();
        loop {
            match Self::try_stamp(client, pipeline, sink, epoch, backfill).await {
                Ok(Some(row)) => {
                    let (lsn, changes, replay, backfill) = row;
                    let offset = read_offset(sink, &lsn, changes)?;
                    let replay_until = replay
                        .map(|(l, n)| read_offset(sink, &l, n))
                        .transpose()?
                        .filter(|r| *r > offset);
                    let fence = PgFence {
                        pipeline: pipeline.to_owned(),
                        sink: sink.to_owned(),
                        epoch,
                        replay_until,
                        backfill,
                    };
                    return Ok((fence, offset));
                }
                Ok(None) => {
                    let Some((_, current)) = load(client, pipeline, sink).await? else {
                        return Err(LeaderError::Corrupt {
                            sink: sink.to_owned(),
                            detail: "the offset row vanished while stamping".to_owned(),
                        });
                    };
                    return Err(LeaderError::Fenced {
                        pipeline: pipeline.to_owned(),
                        sink: sink.to_owned(),
                        ours: epoch,
                        current,
                    });
                }
                Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    if started.elapsed() >= takeover_after {
                        terminate_idle_holders(client, takeover_after).await?;
                    }
                }
                Err(e) => {
                    return Err(LeaderError::db("stamping the epoch on the sink's offset")(
                        e,
                    ));
                }
            }
        }
    }

    /// One stamping transaction with a short lock timeout, so a holder that never lets go
    /// is noticed. `None`: a newer epoch owns the row.
    async fn try_stamp(
        client: &Client,
        pipeline: &str,
        sink: &str,
        epoch: Epoch,
        backfill: Option<&str>,
    ) -> Result<Option<StampedRow>, tokio_postgres::Error> {
        let result = async {
            client
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                    STAMP_LOCK_WAIT.as_millis()
                ))
                .await?;
            client
                .execute(
                    "INSERT INTO pgprism.offsets (pipeline, sink, epoch, backfill)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (pipeline, sink) DO NOTHING",
                    &[&pipeline, &sink, &epoch.0, &backfill],
                )
                .await?;
            // A separate statement: under READ COMMITTED it sees a newer epoch committed
            // while the insert waited, so an older epoch can never read it as its own.
            let row = client
                .query_opt(
                    "UPDATE pgprism.offsets SET epoch = $3, updated_at = clock_timestamp()
                      WHERE pipeline = $1 AND sink = $2 AND epoch <= $3
                     RETURNING resume_lsn::text, changes_done, replay_lsn::text, replay_changes,
                               backfill",
                    &[&pipeline, &sink, &epoch.0],
                )
                .await?;
            client.batch_execute("COMMIT").await?;
            Ok(row.map(|r| {
                let replay = match (r.get::<_, Option<String>>(2), r.get::<_, Option<i64>>(3)) {
                    (Some(l), Some(n)) => Some((l, n)),
                    _ => None,
                };
                (r.get(0), r.get(1), replay, r.get(4))
            }))
        }
        .await;
        if result.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        result
    }

    /// The epoch this fence writes with.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// While a replay is open: the position the sink had before the rewind. Until the
    /// offset reaches it, the sink applies the replay in one transaction.
    pub fn replay_until(&self) -> Option<Offset> {
        self.replay_until
    }

    /// The backfill state read at the stamp (`None`: no backfill).
    pub fn backfill(&self) -> Option<&str> {
        self.backfill.as_deref()
    }

    /// Inside the sink's transaction (before [`PgFence::commit_offset`], which fences the
    /// whole transaction): record the backfill state that the transaction's rows reach.
    pub async fn set_backfill(
        &self,
        tx: &impl GenericClient,
        state: Option<&str>,
    ) -> Result<(), LeaderError> {
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&self.pipeline, Type::TEXT),
            (&self.sink, Type::TEXT),
            (&state, Type::TEXT),
        ];
        tx.query_typed(
            "UPDATE pgprism.offsets SET backfill = $3 WHERE pipeline = $1 AND sink = $2",
            &params,
        )
        .await
        .map_err(LeaderError::db("recording the backfill's position"))?;
        Ok(())
    }

    /// Inside the sink's transaction: move the offset to `to` if our epoch still owns the
    /// sink and `to` is not behind the stored offset. Roll back on any error.
    pub async fn commit_offset(
        &self,
        tx: &impl GenericClient,
        to: Offset,
    ) -> Result<(), LeaderError> {
        // The batch is written in the open transaction, its offset is not.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("pg-before-offset-commit", |_| pgprism_pg::crash_at(
            "pg-before-offset-commit"
        ));
        self.set(tx, to, Direction::Forward).await
    }

    /// Rewind the offset to `to` for a replay (the one way an offset moves backwards),
    /// under the same fence.
    pub async fn rewind(&self, tx: &impl GenericClient, to: Offset) -> Result<(), LeaderError> {
        // A replay stamped its epoch and is about to rewind (armed to sleep by the test of
        // a leader starting meanwhile).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("before-rewind");
        self.set(tx, to, Direction::Any).await
    }

    async fn set(
        &self,
        tx: &impl GenericClient,
        to: Offset,
        direction: Direction,
    ) -> Result<(), LeaderError> {
        let n = changes_param(&self.sink, to.changes_done)?;
        let (sql, context) = match direction {
            Direction::Forward => (
                "UPDATE pgprism.offsets
                    SET resume_lsn = $4::text::pg_lsn, changes_done = $5, epoch = $3,
                        updated_at = clock_timestamp(),
                        replay_lsn = CASE WHEN (replay_lsn, replay_changes)
                                               > ($4::text::pg_lsn, $5) THEN replay_lsn END,
                        replay_changes = CASE WHEN (replay_lsn, replay_changes)
                                               > ($4::text::pg_lsn, $5) THEN replay_changes END
                  WHERE pipeline = $1 AND sink = $2 AND epoch <= $3
                    AND (resume_lsn, changes_done) <= ($4::text::pg_lsn, $5)",
                "committing the sink's offset",
            ),
            Direction::Any => (
                "UPDATE pgprism.offsets
                    SET resume_lsn = $4::text::pg_lsn, changes_done = $5, epoch = $3,
                        updated_at = clock_timestamp(),
                        replay_lsn = CASE
                            WHEN (replay_lsn, replay_changes) > (resume_lsn, changes_done) THEN replay_lsn
                            WHEN (resume_lsn, changes_done) > ($4::text::pg_lsn, $5) THEN resume_lsn END,
                        replay_changes = CASE
                            WHEN (replay_lsn, replay_changes) > (resume_lsn, changes_done) THEN replay_changes
                            WHEN (resume_lsn, changes_done) > ($4::text::pg_lsn, $5) THEN changes_done END
                  WHERE pipeline = $1 AND sink = $2 AND epoch <= $3",
                "rewinding the sink's offset",
            ),
        };
        // Typed parameters: one round trip in every sink commit.
        let lsn = lsn_text(to.resume_lsn);
        let params: [(&(dyn ToSql + Sync), Type); 5] = [
            (&self.pipeline, Type::TEXT),
            (&self.sink, Type::TEXT),
            (&self.epoch.0, Type::INT8),
            (&lsn, Type::TEXT),
            (&n, Type::INT8),
        ];
        let rows = tx
            .query_typed_raw(sql, params.iter().map(|(v, t)| (*v, t.clone())))
            .await
            .map_err(LeaderError::db(context))?;
        let mut rows = std::pin::pin!(rows);
        while rows
            .try_next()
            .await
            .map_err(LeaderError::db(context))?
            .is_some()
        {}
        if rows.rows_affected() == Some(1) {
            return Ok(());
        }
        Err(self.why_not(tx, to).await?)
    }

    /// After an update matched no row: fenced, or backwards?
    async fn why_not(
        &self,
        tx: &impl GenericClient,
        to: Offset,
    ) -> Result<LeaderError, LeaderError> {
        let Some((stored, current)) = load(tx, &self.pipeline, &self.sink).await? else {
            return Ok(LeaderError::Corrupt {
                sink: self.sink.clone(),
                detail: "the offset row is gone; stamp the sink again".to_owned(),
            });
        };
        if current > self.epoch {
            return Ok(LeaderError::Fenced {
                pipeline: self.pipeline.clone(),
                sink: self.sink.clone(),
                ours: self.epoch,
                current,
            });
        }
        Ok(LeaderError::Backwards {
            sink: self.sink.clone(),
            from: position(stored.resume_lsn, stored.changes_done as i64),
            to: position(to.resume_lsn, to.changes_done as i64),
        })
    }

    /// The sink's durable offset (no fence: for status and for resuming).
    pub async fn read(
        client: &impl GenericClient,
        pipeline: &str,
        sink: &str,
    ) -> Result<Option<Offset>, LeaderError> {
        Ok(load(client, pipeline, sink)
            .await?
            .map(|(offset, _)| offset))
    }
}

/// The backfill state of (pipeline, sink) (no fence: for status).
pub async fn read_backfill(
    client: &impl GenericClient,
    pipeline: &str,
    sink: &str,
) -> Result<Option<String>, LeaderError> {
    let row = client
        .query_opt(
            "SELECT backfill FROM pgprism.offsets WHERE pipeline = $1 AND sink = $2",
            &[&pipeline, &sink],
        )
        .await
        .map_err(LeaderError::db("reading the sink's backfill state"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// The offset row of (pipeline, sink): its position and the epoch that owns it.
async fn load(
    client: &impl GenericClient,
    pipeline: &str,
    sink: &str,
) -> Result<Option<(Offset, Epoch)>, LeaderError> {
    let row = client
        .query_opt(
            "SELECT resume_lsn::text, changes_done, epoch FROM pgprism.offsets
              WHERE pipeline = $1 AND sink = $2",
            &[&pipeline, &sink],
        )
        .await
        .map_err(LeaderError::db("reading the sink's offset"))?;
    row.map(|r| Ok((read_offset(sink, r.get(0), r.get(1))?, Epoch(r.get(2)))))
        .transpose()
}
