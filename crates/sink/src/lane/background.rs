//! Background flushes of a Postgres target: a batch's rows and offset are applied and
//! committed by a task while the next batch fills; two sessions take turns. A flush
//! started here is *accepted*; its offset is *durable* only once [`Lane::settle_one`] has
//! seen it commit — until then nothing it covers is acknowledged.

use std::sync::Arc;

use pgprism_decoder::Lsn;
use pgprism_leader::Offset;
use tokio::sync::oneshot;

use super::*;

/// A Postgres flush started by [`Lane::flush_behind`]: its transaction is open, the rows
/// and the offset are being written by a task while the next batch fills.
pub(super) struct InFlight {
    /// Rows written; or the error and the batch, to flush again the synchronous way (on
    /// success the task drops the batch, off this task's path).
    pub(super) handle: tokio::task::JoinHandle<Result<u64, (SinkError, Arc<Batch>)>>,
    /// Its session (see [`PgWriter::session`]).
    pub(super) session: usize,
    /// Whether it committed, for the next background flush (which applies its rows only
    /// after it); taken by that one.
    pub(super) done: Option<oneshot::Receiver<bool>>,
    /// Keys in the batch.
    pub(super) keys: usize,
    pub(super) changes: usize,
    pub(super) to: Offset,
    pub(super) ack: Lsn,
    /// Rows written and dead letters recorded before the task started.
    pub(super) written: u64,
    pub(super) dead: u64,
}

impl Lane {
    /// Like [`Lane::flush`], except that a batch of rows for a Postgres target (outside a
    /// replay) is applied and committed by a background task while the next batch fills:
    /// routing the next changes overlaps the sink's work, and two sessions take turns, so
    /// one batch is copied into a staging table while the one before it is applied. Batches
    /// still apply and commit strictly in order. An offset becomes durable (and its counts
    /// reported) when a later call waits for its flush ([`Lane::settle`]); until then
    /// `stored` and `ackable` stay where they were, so nothing is acknowledged early.
    pub(crate) async fn flush_behind(
        &mut self,
        to: Offset,
        ack: Lsn,
    ) -> Result<LaneFlush, SinkError> {
        let mut settled = LaneFlush::default();
        // The session this batch needs is busy with the oldest flush: wait for that one.
        while self
            .inflight
            .front()
            .is_some_and(|f| f.session == self.next_session)
        {
            settled = settled.and(self.settle_one().await?);
        }
        let deferrable = match (&self.pending, &self.writer) {
            (Some(Pending::Rows(b)), Writer::Postgres(w)) => {
                self.replay_until.is_none()
                    && w.replay_flushes == 0
                    && !self.backfilling()
                    // A truncate waits for the table lock the flush before holds.
                    && (b.truncate.is_none() || self.inflight.is_empty())
            }
            _ => false,
        };
        if deferrable {
            // The session it tries (none of its flushes is running: settled above).
            let session = self.next_session;
            match self.start_behind(to, ack).await {
                Ok(()) => return Ok(settled),
                Err(e) => {
                    // The synchronous flush below waits for the others, then retries,
                    // isolates rejected rows and reports.
                    tracing::debug!(target_name = %self.name, error = %e, "starting a background flush failed");
                    if let Some((client, table, in_tx)) = w_session(&mut self.writer, session)
                        && *in_tx
                    {
                        roll_back(&client, &table, in_tx).await;
                    }
                }
            }
        }
        Ok(settled.and(self.flush(to, ack).await?))
    }

    /// The first half of a background flush, in this task: begin, carry out `dlq`
    /// requests (only with no other flush running), record held keys, truncate; then hand
    /// the rows, the offset and the commit to a task.
    pub(super) async fn start_behind(&mut self, to: Offset, ack: Lsn) -> Result<(), SinkError> {
        let to = to.max(self.covered);
        let s = self.next_session;
        let (Some(Pending::Rows(batch)), Writer::Postgres(w)) = (&self.pending, &mut self.writer)
        else {
            unreachable!("checked by flush_behind");
        };
        let batch = batch.clone();
        if s == 1 && w.alt.as_ref().is_none_or(|a| a.client.is_closed()) {
            let (client, pid) = match connect_writer(&w.dsn, &self.name).await {
                Ok(c) => c,
                Err(e) => {
                    // Too many connections, say: go on with one session.
                    tracing::warn!(target_name = %self.name, error = %e, "could not open a second sink session; background flushes use one");
                    w.alt = None;
                    w.sessions = 1;
                    self.next_session = 0;
                    return Err(e);
                }
            };
            w.alt = Some(AltSession {
                client: Arc::new(client),
                table: Arc::new(w.table.for_another_session()),
                in_tx: false,
                pid,
            });
        }
        let fence = w.fence.clone();
        let (client, table, in_tx) = w.session(s).expect("opened above");
        if client.is_closed() {
            return Err(SinkError::Restart {
                target: self.name.clone(),
                message: "the sink session is closed".to_owned(),
            });
        }
        if *in_tx {
            // Left by a flush cancelled mid-way.
            roll_back(&client, &table, in_tx).await;
        }
        client
            .batch_execute("BEGIN")
            .await
            .map_err(SinkError::pg(&self.name, "beginning the sink transaction"))?;
        *in_tx = true;
        table.transaction_ended();
        let mut written = 0;
        if self.inflight.is_empty() {
            written = requests_pg(
                &*client,
                &self.dead,
                &mut self.logic,
                &mut self.source,
                &self.source_dsn,
                &table,
                &batch.shape,
                &self.name,
            )
            .await?;
        }
        let (held, dead) = hold_and_truncate(&*client, &self.dead, &table, &batch).await?;
        let before = self.inflight.back_mut().and_then(|f| f.done.take());
        let (done_tx, done_rx) = oneshot::channel();
        let (name, rows) = (self.name.clone(), batch.clone());
        let handle = tokio::spawn(async move {
            let done: Result<u64, SinkError> = async {
                let (go, _) = split_held(&rows, &held);
                // Staged while the flush before applies; applied only once it committed.
                let stage = table.stage(&*client, &rows.shape, &go).await?;
                if let Some(before) = before
                    && before.await != Ok(true)
                {
                    return Err(SinkError::Restart {
                        target: name.clone(),
                        message: "the flush before this one failed".to_owned(),
                    });
                }
                let applied = table
                    .apply_staged(&*client, &rows.shape, &go, stage)
                    .await?;
                fence.commit_offset(&*client, to).await?;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(SinkError::pg(&name, "committing the sink transaction"))?;
                Ok(applied.upserted + applied.deleted)
            }
            .await;
            done_tx.send(done.is_ok()).ok();
            done.map_err(|e| (e, rows))
        });
        self.inflight.push_back(InFlight {
            handle,
            session: s,
            done: Some(done_rx),
            keys: batch.entries.len(),
            changes: self.pending_changes,
            to,
            ack,
            written,
            dead,
        });
        self.next_session = (s + 1) % w.sessions;
        self.pending = None;
        self.pending_changes = 0;
        self.covered = to;
        Ok(())
    }

    /// Wait for every background flush (see [`Lane::settle_one`]).
    pub(crate) async fn settle(&mut self) -> Result<LaneFlush, SinkError> {
        let mut settled = LaneFlush::default();
        while !self.inflight.is_empty() {
            settled = settled.and(self.settle_one().await?);
        }
        Ok(settled)
    }

    /// Wait for the oldest background flush. Done: its offset is durable and its counts
    /// are returned. Failed: its transaction and those of the flushes after it (which
    /// never apply before it commits) are rolled back, and their batches are flushed again
    /// the synchronous way, in order — retries, rejected rows isolated to dead letters.
    pub(super) async fn settle_one(&mut self) -> Result<LaneFlush, SinkError> {
        let Some(f) = self.inflight.pop_front() else {
            return Ok(LaneFlush::default());
        };
        let outcome = match f.handle.await {
            Ok(r) => r,
            Err(e) => {
                // Its batch went with it: start over from the stored offset.
                return Err(SinkError::Restart {
                    target: self.name.clone(),
                    message: format!("the background flush stopped: {e}"),
                });
            }
        };
        let Writer::Postgres(w) = &mut self.writer else {
            unreachable!("only Postgres targets flush in the background");
        };
        let (client, table, in_tx) = w.session(f.session).expect("used by the flush");
        let (e, batch) = match outcome {
            Ok(n) => {
                *in_tx = false;
                table.transaction_ended();
                self.stored = f.to;
                self.ackable = self.ackable.max(f.ack);
                self.last_commit = Instant::now();
                self.last_keys = f.keys;
                return Ok(LaneFlush {
                    written: f.written + n,
                    dead_letters: f.dead,
                    ..LaneFlush::default()
                });
            }
            Err(failed) => failed,
        };
        roll_back(&client, &table, in_tx).await;
        if e.is_fenced() {
            return Err(e);
        }
        tracing::warn!(target_name = %self.name, error = %e, "a background flush failed; flushing its batch again");
        // The later ones fail too (they wait for this one): collect them, then redo all.
        let mut redo = vec![(batch, f.changes, f.to, f.ack)];
        while let Some(later) = self.inflight.pop_front() {
            let Ok(Err((_, batch))) = later.handle.await else {
                return Err(SinkError::Restart {
                    target: self.name.clone(),
                    message: "a background flush after a failed one did not stop".to_owned(),
                });
            };
            if let Some((client, table, in_tx)) = w_session(&mut self.writer, later.session) {
                roll_back(&client, &table, in_tx).await;
            }
            redo.push((batch, later.changes, later.to, later.ack));
        }
        self.next_session = 0;
        // Each batch again with its own offset: `covered` ran ahead to the last one's.
        self.covered = self.stored;
        let newer = self.pending.take();
        let newer_changes = self.pending_changes;
        // The failed batch is retried below: a lock wait or timeout counts as contention.
        let mut report = LaneFlush {
            retries: u32::from(e.class() == Class::Transient),
            contended: is_contention(&e),
            ..LaneFlush::default()
        };
        for (batch, changes, to, ack) in redo {
            self.pending = Some(Pending::Rows(batch));
            self.pending_changes = changes;
            match self.flush_now(to, ack).await {
                Ok(r) => report = report.and(r),
                Err(e) => {
                    self.pending = newer;
                    self.pending_changes = newer_changes;
                    return Err(e);
                }
            }
        }
        self.pending = newer;
        self.pending_changes = newer_changes;
        Ok(report)
    }
}
