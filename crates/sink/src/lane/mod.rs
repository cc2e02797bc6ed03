//! A lane: one projection writing to one target — its pending batch, its writer, its
//! offset and its dead letters.
//!
//! A flush is all-or-nothing per lane. Postgres: one transaction holds the dead-letter
//! requests carried out, the batch's rows, the new dead letters and the fenced offset
//! update. Redis: the guarded write scripts, then the offset; the dead letters (in the
//! source database) are written before the offset moves. A crash at any point leaves
//! either the old offset (the batch is redelivered; Postgres rolled back, Redis guards
//! skip what was written) or the new one with everything it covers.
//!
//! Rows the target rejects are isolated by bisecting the batch under savepoints, so one
//! bad row costs a few extra statements, not a row-by-row batch.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{Backoff, ChangeKind};
use pgprism_leader::Offset;
use pgprism_pg::Dsn;
use tokio_postgres::Client;

use crate::backfill::{Backfill, Chunk, chunk_position};
use crate::batch::{Batch, Entry, Key, Position, Shape, key_from_json, key_json, op_from_json};
use crate::dead_letter::{DeadLetters, Letter, Status, Stored};
use crate::error::{Class, SinkError};
use crate::mirror::Mirror;
use crate::postgres::{Applied, PgTable};
use crate::query::{KeySet, QueryProjection};

mod background;
mod pg;
mod redis_target;
mod replay;
mod writer;

use background::InFlight;

pub(crate) use pg::{AltSession, PgWriter};
use pg::{hold_and_truncate, requests_pg, retry_batch, roll_back};
pub(crate) use writer::{
    Durability, LaneParts, TargetWriter, Work, Writer, connect, connect_writer,
};

/// How a projection turns changes into operations.
#[derive(Debug)]
pub(crate) enum Logic {
    Mirror(Mirror),
    Query(QueryProjection),
}

/// Changes waiting for the next flush.
#[derive(Debug)]
enum Pending {
    /// Shared with a flush in progress, so a flush never copies the batch.
    Rows(Arc<Batch>),
    Keys(KeySet),
}

/// What a flush did in one lane.
#[derive(Debug, Default, Clone, Copy)]
pub struct LaneFlush {
    /// Rows written (upserted or deleted).
    pub written: u64,
    /// New dead letters (failed or held).
    pub dead_letters: u64,
    /// Transient errors retried.
    pub retries: u32,
    /// Whether a retry was for contention (lock wait, timeout, deadlock).
    pub contended: bool,
}

impl LaneFlush {
    /// Both flushes' counts.
    fn and(self, other: LaneFlush) -> LaneFlush {
        LaneFlush {
            written: self.written + other.written,
            dead_letters: self.dead_letters + other.dead_letters,
            retries: self.retries + other.retries,
            contended: self.contended || other.contended,
        }
    }
}

/// One projection → one target.
pub struct Lane {
    pub(crate) name: String,
    pub(crate) projection: String,
    pub(crate) sink: String,
    logic: Logic,
    writer: Writer,
    source_dsn: Dsn,
    source: Option<Client>,
    dead: DeadLetters,
    pending: Option<Pending>,
    pending_changes: usize,
    /// The pending keys, already recomputed for another target of the same projection
    /// (see [`Lane::share_recompute`]); taken by the next attempt to write them.
    recomputed: Option<Arc<Batch>>,
    /// The backfill chunk `recomputed` includes (read once for every target).
    shared_chunk: Option<Chunk>,
    /// The next flush writes even inside a backfill window (an explicit flush: a stop,
    /// or a caller that needs everything durable now).
    pub(crate) force: bool,
    /// Keys in the last batch written: room reserved in the next one.
    last_keys: usize,
    /// The shape of the rows (known from the source catalog at start, kept current).
    shape: Option<Arc<Shape>>,
    /// Stored offset.
    pub(crate) stored: Offset,
    /// Everything before this is durable in the target or does not concern it.
    pub(crate) covered: Offset,
    /// The LSN the slot may be acknowledged to as far as this lane is concerned.
    pub(crate) ackable: Lsn,
    /// Postgres targets during a replay: the position before the rewind. Until the lane
    /// reaches it again, its flushes go into one open transaction, committed there, so
    /// readers never see rows older than before the replay.
    replay_until: Option<Offset>,
    last_commit: Instant,
    backoff: Backoff,
    /// Postgres flushes applying and committing in the background, oldest first (at most
    /// one per session).
    inflight: VecDeque<InFlight>,
    /// The session the next background flush uses.
    next_session: usize,
    /// Transient failures of one flush for this long set the lane aside.
    detach_after: Duration,
    /// Set aside (see [`Lane::detach`]): the commit time (µs since 2000-01-01) of the
    /// oldest change it lacks.
    pub(crate) detached: Option<i64>,
    /// When it was last probed while set aside.
    probed: Instant,
    /// Loading the rows that existed before the target joined (see `backfill`).
    pub(crate) backfill: Option<Backfill>,
    /// Mirrors during a backfill: the transactions of the pending batch, which a chunk's
    /// snapshot must see.
    backfill_xids: std::collections::BTreeSet<u32>,
    /// Every transaction committed before this LSN has been routed (a logical message at
    /// it came through the stream).
    pub(crate) delivered: Lsn,
    /// Its pending batch waits for the stream to pass a backfill window (not counted as
    /// waiting until more changes come or the window closes).
    pub(crate) held: bool,
    /// The chunk written by the last successful attempt, to account once it is durable.
    chunk: Option<Chunk>,
    /// When the last attempt began, and how long reading and recomputing took (for the
    /// chunk's debug line).
    chunk_timing: (Instant, Duration),
    /// A rebuild's shadow lane: the live table it replaces once loaded (see `rebuild`).
    pub(crate) swap: Option<crate::rebuild::Swap>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Like a flush future dropped mid-way: no further statement is sent, and the
        // session (closed with the lane) rolls back what was not committed.
        for f in &self.inflight {
            f.handle.abort();
        }
    }
}

/// Store offsets of lanes with nothing to write at most this often.
const IDLE_OFFSET_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("name", &self.name)
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

/// What the slot may be acknowledged to when `offset` is all that is known: the end of a
/// whole transaction, or nothing for an offset inside one (its transaction's start is
/// not recorded).
pub(crate) fn acknowledgeable(offset: Offset) -> Lsn {
    if offset.changes_done == 0 {
        offset.resume_lsn
    } else {
        Lsn(0)
    }
}

impl Lane {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        projection: String,
        sink: String,
        pipeline: &str,
        logic: Logic,
        writer: Writer,
        source_dsn: Dsn,
        shape: Option<Arc<Shape>>,
        stored: Offset,
        detach_after: Duration,
        backfill: Option<Backfill>,
    ) -> Lane {
        let replay_until = writer.replay_until();
        Lane {
            dead: DeadLetters::new(pipeline, &name),
            name,
            projection,
            sink,
            logic,
            writer,
            source_dsn,
            source: None,
            pending: None,
            pending_changes: 0,
            recomputed: None,
            shared_chunk: None,
            force: false,
            last_keys: 0,
            inflight: VecDeque::new(),
            next_session: 0,
            detach_after,
            detached: None,
            probed: Instant::now(),
            shape,
            covered: stored,
            ackable: acknowledgeable(stored),
            replay_until,
            stored,
            last_commit: Instant::now(),
            backoff: Backoff::default(),
            backfill,
            backfill_xids: Default::default(),
            delivered: Lsn(0),
            held: false,
            chunk: None,
            chunk_timing: (Instant::now(), Duration::ZERO),
            swap: None,
        }
    }

    /// A shadow lane whose backfill is done, and where it is durable: ready to swap once
    /// the live lane is durable at the same offset.
    pub(crate) fn swap_ready(&self) -> bool {
        self.swap.is_some()
            && self.detached.is_none()
            && self.pending.is_none()
            && self.inflight.is_empty()
            && self
                .backfill
                .as_ref()
                .is_none_or(|b| !b.state.running() && b.window.is_none())
    }

    /// Swap a loaded shadow in for the live table (see [`crate::rebuild`]).
    pub(crate) async fn swap_in(&mut self, pipeline: &str) -> Result<(), SinkError> {
        let (Some(swap), Writer::Postgres(w)) = (&self.swap, &mut self.writer) else {
            return Ok(());
        };
        if w.in_tx {
            roll_back(&w.client, &w.table, &mut w.in_tx).await;
        }
        let done = self
            .backfill
            .as_ref()
            .map(|b| b.state.clone())
            .unwrap_or_else(crate::backfill::BackfillState::start);
        swap.run(
            &w.client,
            &w.table,
            &w.fence,
            self.stored,
            pipeline,
            &self.name,
            done,
        )
        .await
    }

    /// Whether a backfill chunk goes with this lane's next flush.
    pub(crate) fn chunk_due(&self) -> bool {
        self.replay_until.is_none()
            && self.detached.is_none()
            && self
                .backfill
                .as_ref()
                .is_some_and(|b| b.due(Instant::now(), self.pending.is_some()))
    }

    /// Whether the lane still loads existing rows, or waits for a backfill window.
    fn backfilling(&self) -> bool {
        self.backfill
            .as_ref()
            .is_some_and(|b| b.state.running() || b.window.is_some())
    }

    /// The stream routed every transaction committed before `lsn`.
    pub(crate) fn note_delivered(&mut self, lsn: Lsn) {
        if lsn > self.delivered {
            self.delivered = lsn;
            if let Some(b) = &mut self.backfill {
                // Every transaction of the window is routed: the next flush holds them
                // all, whatever it ends at; the next chunk may go.
                b.close_window(self.covered, lsn);
                if !b.holds(self.covered, lsn) {
                    self.held = false;
                }
            }
        }
    }

    /// Changes waiting.
    pub(crate) fn pending_changes(&self) -> usize {
        self.pending_changes
    }

    /// Whether the change at `pos` is already durable here.
    pub(crate) fn covers(&self, pos: Position) -> bool {
        let o = self.covered;
        pos.commit_lsn < o.resume_lsn
            || (o.changes_done > 0 && pos.commit_lsn == o.resume_lsn && pos.seq < o.changes_done)
    }

    /// Whether `kind` concerns this lane.
    pub(crate) fn concerns(&self, kind: &ChangeKind) -> bool {
        let is_source = |r: &pgprism_decoder::pgoutput::Relation| match &self.logic {
            Logic::Mirror(m) => m.is_source(r),
            Logic::Query(q) => q.is_source(r),
        };
        match kind {
            ChangeKind::Insert { relation, .. }
            | ChangeKind::Update { relation, .. }
            | ChangeKind::Delete { relation, .. } => is_source(relation),
            ChangeKind::Truncate { relations, .. } => relations.iter().any(|r| is_source(r)),
            ChangeKind::Message(_) => false,
        }
    }

    /// For a mirror: the shape this change's rows have, if it differs from the pending
    /// batch's (the batch must be flushed first).
    pub(crate) fn shape_change(&mut self, kind: &ChangeKind) -> Result<bool, SinkError> {
        let (Logic::Mirror(m), Some(relation)) = (&mut self.logic, relation_of(kind)) else {
            return Ok(false);
        };
        let shape = m.shape(relation)?;
        // Pointer comparisons first: the shape is the same `Arc` until the relation changes.
        let same = |a: &Arc<Shape>| Arc::ptr_eq(a, &shape) || **a == *shape;
        let differs = match &self.pending {
            Some(Pending::Rows(b)) => !same(&b.shape) && !b.is_empty(),
            _ => false,
        };
        if !differs {
            if !self.shape.as_ref().is_some_and(same) {
                self.writer.check_shape(&shape)?;
                self.shape = Some(shape.clone());
            }
            if let Some(Pending::Rows(b)) = &mut self.pending
                && !Arc::ptr_eq(&b.shape, &shape)
            {
                Arc::make_mut(b).shape = shape;
            }
        }
        Ok(differs)
    }

    /// Fold one change in.
    pub(crate) fn push(
        &mut self,
        kind: &ChangeKind,
        pos: Position,
        xid: u32,
    ) -> Result<(), SinkError> {
        self.held = false;
        if matches!(self.logic, Logic::Mirror(_)) && self.backfilling() {
            self.backfill_xids.insert(xid);
        }
        match &mut self.logic {
            Logic::Mirror(m) => {
                let shape = match &self.shape {
                    Some(s) => s.clone(),
                    None => return Err(SinkError::config(&self.name, "no row shape known")),
                };
                let pending = self.pending.get_or_insert_with(|| {
                    Pending::Rows(Arc::new(Batch::with_capacity(shape, self.last_keys)))
                });
                if let Pending::Rows(b) = pending {
                    m.route(kind, pos, Arc::make_mut(b))?;
                }
            }
            Logic::Query(q) => {
                let pending = self
                    .pending
                    .get_or_insert_with(|| Pending::Keys(KeySet::default()));
                if let Pending::Keys(k) = pending {
                    q.touch(kind, pos, xid, k)?;
                }
            }
        }
        self.pending_changes += 1;
        Ok(())
    }

    /// Make everything pushed so far durable and move the offset to `to`, retrying
    /// transient errors with backoff. `ack` is what the slot may be acknowledged to once
    /// this succeeds. A background flush still running is waited for first (and counted).
    pub(crate) async fn flush(&mut self, to: Offset, ack: Lsn) -> Result<LaneFlush, SinkError> {
        let settled = self.settle().await?;
        Ok(settled.and(self.flush_now(to, ack).await?))
    }

    /// Set the lane aside after its flush stalled: its batch is dropped (its offset stays
    /// where it was, and so does the slot's acknowledgement, so nothing is lost) and it
    /// takes no changes until the stream restarts from its offset. `oldest` is the commit
    /// time of the oldest change it lacks, for the lag.
    pub(crate) fn detach(&mut self, oldest: i64) {
        self.pending = None;
        self.pending_changes = 0;
        self.covered = self.stored;
        self.detached = Some(oldest);
        self.probed = Instant::now();
    }

    /// For a lane set aside, at most once a second: whether its target answers again.
    pub(crate) async fn probe(&mut self) -> bool {
        if self.probed.elapsed() < Duration::from_secs(1) {
            return false;
        }
        self.probed = Instant::now();
        self.reconnect_if_closed().await;
        self.writer.probe().await
    }

    /// Whether a background flush is running.
    pub(crate) fn is_behind(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// [`Lane::flush`] on the main session, with no background flush running.
    async fn flush_now(&mut self, to: Offset, ack: Lsn) -> Result<LaneFlush, SinkError> {
        let to = to.max(self.covered);
        if let Some(b) = &mut self.backfill {
            if self.force {
                // An explicit flush writes through the window.
                b.window = None;
            }
            b.close_window(to, self.delivered);
            if self.pending.is_some() && b.holds(to, self.delivered) {
                // Committing now would split a backfill window (see `backfill`): the batch
                // waits for the stream to pass it.
                self.held = true;
                return Ok(LaneFlush::default());
            }
        }
        self.held = false;
        let chunk_due = self.chunk_due();
        let idle = self.pending.is_none() && !chunk_due;
        let replay_ends = self.replay_until.is_some_and(|hwm| to >= hwm);
        if idle && !replay_ends && self.last_commit.elapsed() < IDLE_OFFSET_EVERY {
            // Nothing of ours in between: no write needed for correctness.
            if to > self.covered {
                self.covered = to;
                if self.replay_until.is_none() {
                    self.ackable = self.ackable.max(ack);
                }
            }
            return Ok(LaneFlush::default());
        }
        let mut report = LaneFlush::default();
        let mut attempt = 0u32;
        let failing_since = Instant::now();
        loop {
            match self.try_flush(to, chunk_due).await {
                Ok((written, dead, durability)) => {
                    report.written = written;
                    report.dead_letters = dead;
                    if let Some(Pending::Rows(b)) = &self.pending {
                        self.last_keys = b.entries.len();
                    }
                    self.pending = None;
                    self.pending_changes = 0;
                    self.covered = to;
                    if durability == Durability::Durable {
                        self.stored = to;
                        self.ackable = self.ackable.max(ack);
                        self.last_commit = Instant::now();
                        self.replay_until = None;
                        self.backfill_xids.clear();
                        self.backfill_committed().await;
                    }
                    return Ok(report);
                }
                Err(e) if self.replay_open() => {
                    // The open replay transaction is gone with everything applied in it:
                    // start over from the stored (rewound) offset.
                    self.abandon_replay().await;
                    return Err(SinkError::Restart {
                        target: self.name.clone(),
                        message: format!(
                            "the replay transaction failed and was rolled back; the replay restarts from the rewound offset: {e}"
                        ),
                    });
                }
                Err(e)
                    if e.class() == Class::Transient
                        && !e.is_fenced()
                        && failing_since.elapsed() >= self.detach_after =>
                {
                    return Err(SinkError::Stalled {
                        target: self.name.clone(),
                        failing: failing_since.elapsed(),
                        source: Box::new(e),
                    });
                }
                Err(e) if e.class() == Class::Transient && !e.is_fenced() => {
                    report.retries += 1;
                    report.contended |= is_contention(&e);
                    let delay = self.backoff.delay(attempt);
                    attempt += 1;
                    tracing::warn!(target_name = %self.name, error = %e, retry_in = ?delay, "transient sink error; retrying the batch");
                    if is_contention(&e) {
                        self.writer.contended(&self.name).await;
                    }
                    tokio::time::sleep(delay).await;
                    self.reconnect_if_closed().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn reconnect_if_closed(&mut self) {
        self.writer.reconnect_if_closed(&self.name).await;
        if self.source.as_ref().is_some_and(Client::is_closed) {
            self.source = None;
        }
    }

    async fn source(&mut self) -> Result<&Client, SinkError> {
        if self.source.is_none() {
            self.source = Some(connect(&self.source_dsn, &self.name).await?);
        }
        Ok(self.source.as_ref().expect("connected above"))
    }

    /// The batch to write: the pending rows, or the pending keys recomputed now (with
    /// the keys the projection query failed for, for the dead letters).
    async fn materialize(
        &mut self,
        chunk: Option<&Chunk>,
        to: Offset,
    ) -> Result<Option<(Arc<Batch>, Vec<Failure>)>, SinkError> {
        if let Some(chunk) = chunk {
            return self.materialize_chunk(chunk, to).await;
        }
        let keys = match &self.pending {
            None => return Ok(None),
            Some(Pending::Rows(b)) => return Ok(Some((b.clone(), Vec::new()))),
            Some(Pending::Keys(_)) if self.recomputed.is_some() => {
                let batch = self.recomputed.take().expect("checked");
                self.shape = Some(batch.shape.clone());
                return Ok(Some((batch, Vec::new())));
            }
            Some(Pending::Keys(k)) => k.clone(),
        };
        self.recompute(keys).await
    }

    /// Recompute `keys` on the source (every key of the target too after a truncate).
    async fn recompute(
        &mut self,
        keys: KeySet,
    ) -> Result<Option<(Arc<Batch>, Vec<Failure>)>, SinkError> {
        let existing = if keys.everything {
            self.existing_keys().await?
        } else {
            Vec::new()
        };
        self.source().await?;
        let (Logic::Query(q), Some(source)) = (&mut self.logic, &self.source) else {
            return Ok(None);
        };
        let (batch, failed) = q.resolve(source, keys, existing).await?;
        self.shape = Some(batch.shape.clone());
        Ok(Some((Arc::new(batch), failed)))
    }

    /// The batch to write with a backfill chunk: a mirror's rows merged after the pending
    /// changes (they are at least as new), a query projection's scanned keys recomputed
    /// with the pending ones.
    async fn materialize_chunk(
        &mut self,
        chunk: &Chunk,
        to: Offset,
    ) -> Result<Option<(Arc<Batch>, Vec<Failure>)>, SinkError> {
        let pos = chunk_position(to);
        match &mut self.logic {
            Logic::Mirror(m) => {
                let Some((_, relation)) = m.backfill_scan() else {
                    return Err(SinkError::config(&self.name, "no row shape known"));
                };
                let shape = m.shape(&relation)?;
                let mut batch = match &self.pending {
                    Some(Pending::Rows(b)) => (**b).clone(),
                    _ => Batch::with_capacity(shape, chunk.rows.len()),
                };
                for row in &chunk.rows {
                    let new = row
                        .iter()
                        .map(|v| match v {
                            Some(b) => pgprism_decoder::pgoutput::TupleValue::Text(b.clone()),
                            None => pgprism_decoder::pgoutput::TupleValue::Null,
                        })
                        .collect();
                    let insert = ChangeKind::Insert {
                        relation: relation.clone(),
                        new,
                    };
                    m.route(&insert, pos, &mut batch)?;
                }
                self.shape = Some(batch.shape.clone());
                Ok(Some((Arc::new(batch), Vec::new())))
            }
            Logic::Query(_) => {
                // A recompute shared before the chunk was due lacks its keys.
                self.recomputed = None;
                let mut keys = match &self.pending {
                    Some(Pending::Keys(k)) => k.clone(),
                    _ => KeySet::default(),
                };
                if let Logic::Query(q) = &self.logic {
                    q.add_scanned(chunk.source_index, &chunk.rows, pos, &mut keys);
                }
                self.recompute(keys).await
            }
        }
    }

    /// Read the next backfill chunk: a mirror's rows in a snapshot that sees every
    /// transaction of the pending batch (with the WAL position of that snapshot), a
    /// query projection's keys.
    async fn read_chunk(&mut self) -> Result<Chunk, SinkError> {
        self.source().await?;
        let (Some(backfill), Some(source)) = (&self.backfill, &self.source) else {
            return Err(SinkError::config(&self.name, "no backfill to read"));
        };
        match &self.logic {
            Logic::Mirror(m) => {
                let scan = m.backfill_scan().map(|(s, _)| s);
                crate::query::begin_visible_snapshot(source, &self.name, &self.backfill_xids)
                    .await?;
                let read = backfill.read(source, &self.name, scan.as_ref(), true).await;
                let end = if read.is_ok() { "COMMIT" } else { "ROLLBACK" };
                let ended = source
                    .batch_execute(end)
                    .await
                    .map_err(SinkError::pg(&self.name, "ending the source snapshot"));
                let chunk = read?;
                ended?;
                Ok(chunk)
            }
            Logic::Query(_) => {
                backfill
                    .read(source, &self.name, backfill.current_scan(), false)
                    .await
            }
        }
    }

    /// The chunk of the last flush is durable: account for it, and (mirrors) put a
    /// logical message into the WAL after its window, so the stream shows when it passed
    /// the window even if nothing else commits.
    async fn backfill_committed(&mut self) {
        let (Some(chunk), Some(backfill)) = (self.chunk.take(), self.backfill.as_mut()) else {
            return;
        };
        let (began, read) = self.chunk_timing;
        tracing::debug!(target_name = %self.name, rows = chunk.rows.len(), read_and_recompute = ?read,
            write = ?began.elapsed().saturating_sub(read), "backfill chunk committed");
        backfill.committed(&self.name, &chunk);
        if chunk.window.is_some()
            && let Some(source) = &self.source
            && let Err(e) = source
                .batch_execute("SELECT pg_logical_emit_message(false, 'pgprism.backfill', '')")
                .await
        {
            tracing::warn!(target_name = %self.name, error = %e, "could not mark the backfill window in the WAL; the target's next flush waits for the next commit");
        }
    }

    /// Whether this lane's next write is the same recompute as `other`'s: both are
    /// targets of one query projection that took the same changes since the same offset
    /// (so their pending keys are equal), and none of them needs every key of its own
    /// target recomputed (after a truncate).
    pub(crate) fn same_recompute(&self, other: &Lane) -> bool {
        let keys = |l: &Lane| match (&l.logic, &l.pending, l.detached) {
            (Logic::Query(_), Some(Pending::Keys(k)), None) => !k.everything,
            (Logic::Query(_), None, None) => l.chunk_due(),
            _ => false,
        };
        // The same backfill chunk too: none, or both at the same committed position.
        let chunks = match (self.chunk_due(), other.chunk_due()) {
            (false, false) => true,
            (true, true) => {
                self.backfill.as_ref().map(|b| &b.state)
                    == other.backfill.as_ref().map(|b| &b.state)
            }
            _ => false,
        };
        self.projection == other.projection
            && keys(self)
            && keys(other)
            && chunks
            && self.covered == other.covered
            && self.pending_changes == other.pending_changes
    }

    /// Recompute the pending keys once for every target of the projection: the result
    /// is handed to the lanes in `others` (and kept for this one) when the query
    /// succeeded for every key; otherwise each lane recomputes on its own (and
    /// dead-letters the keys that fail, retries transient errors).
    pub(crate) async fn share_recompute(&mut self, others: &mut [&mut Lane], to: Offset) {
        self.recomputed = None;
        self.shared_chunk = None;
        let chunk = if self.chunk_due() {
            match self.read_chunk().await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!(target_name = %self.name, error = %e, "reading a shared backfill chunk failed; each target reads its own");
                    return;
                }
            }
        } else {
            None
        };
        match self.materialize(chunk.as_ref(), to).await {
            Ok(Some((batch, failed))) if failed.is_empty() => {
                for other in others {
                    other.recomputed = Some(batch.clone());
                    other.shared_chunk = chunk.clone();
                }
                self.recomputed = Some(batch);
                self.shared_chunk = chunk;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(target_name = %self.name, error = %e, "a shared recompute failed; each target recomputes on its own");
            }
        }
    }

    /// Forget a recompute handed over for a batch that was not written.
    pub(crate) fn forget_recompute(&mut self) {
        self.recomputed = None;
        self.shared_chunk = None;
    }

    /// The keys present in the target now (a source table of a query projection was
    /// truncated: each must be recomputed).
    async fn existing_keys(&mut self) -> Result<Vec<Key>, SinkError> {
        self.source().await?;
        let (Logic::Query(q), Some(source)) = (&mut self.logic, &self.source) else {
            return Ok(Vec::new());
        };
        let shape = q.prepare(source).await?;
        self.writer.existing_keys(&self.name, &shape).await
    }

    /// One attempt: (rows written, dead letters, whether the offset is now durable).
    async fn try_flush(
        &mut self,
        to: Offset,
        chunk_due: bool,
    ) -> Result<(u64, u64, Durability), SinkError> {
        self.chunk = None;
        let began = Instant::now();
        let shared = self.shared_chunk.take();
        let (chunk, batch, recompute_failed) = match (chunk_due, shared, self.recomputed.take()) {
            // Read and recomputed once for every target of the projection.
            (true, Some(chunk), Some(batch)) => {
                self.shape = Some(batch.shape.clone());
                (Some(chunk), Some(batch), Vec::new())
            }
            (_, _, recomputed) => {
                self.recomputed = recomputed;
                let chunk = if chunk_due {
                    Some(self.read_chunk().await?)
                } else {
                    None
                };
                match self.materialize(chunk.as_ref(), to).await? {
                    Some((b, f)) => (chunk, Some(b), f),
                    None => (chunk, None, Vec::new()),
                }
            }
        };
        self.chunk_timing = (began, began.elapsed());
        let state = chunk.as_ref().map(|c| c.next.to_json());
        let shape = batch
            .as_ref()
            .map(|b| b.shape.clone())
            .or_else(|| self.shape.clone());
        // Inside a replay, until its end: one transaction across flushes (Postgres).
        let in_replay = self.replay_until.is_some_and(|hwm| to < hwm);
        let parts = LaneParts {
            name: &self.name,
            dead: &self.dead,
            logic: &mut self.logic,
            source: &mut self.source,
            source_dsn: &self.source_dsn,
        };
        let work = Work {
            to,
            shape: shape.as_ref(),
            batch: batch.as_deref(),
            recompute_failed: &recompute_failed,
            backfill_state: state.as_deref(),
            in_replay,
        };
        let (written, dead, durability) = self.writer.apply(parts, work).await?;
        if durability == Durability::Durable {
            self.chunk = chunk;
        }
        Ok((written, dead, durability))
    }
}

/// Whether a sink error comes from contention (deadlock, lock wait, statement timeout,
/// serialization failure): the batch is retried smaller.
fn is_contention(e: &SinkError) -> bool {
    e.code()
        .as_deref()
        .is_some_and(pgprism_pg::sqlstate::is_contention)
}

/// [`PgWriter::session`] of a Postgres writer.
fn w_session(writer: &mut Writer, s: usize) -> Option<(Arc<Client>, Arc<PgTable>, &mut bool)> {
    match writer {
        Writer::Postgres(w) => w.session(s),
        Writer::Redis(_) => None,
    }
}

fn relation_of(kind: &ChangeKind) -> Option<&Arc<pgprism_decoder::pgoutput::Relation>> {
    match kind {
        ChangeKind::Insert { relation, .. }
        | ChangeKind::Update { relation, .. }
        | ChangeKind::Delete { relation, .. } => Some(relation),
        _ => None,
    }
}

/// The entries to write and those held behind a dead letter of their key.
/// A key the projection query failed for.
type Failure = (Key, Entry, SinkError);

fn failure_letters(failed: &[Failure]) -> Vec<Letter<'_>> {
    failed
        .iter()
        .map(|(k, e, err)| Letter {
            key: k,
            entry: e,
            status: Status::Failed,
            code: err.code(),
            error: err.detail(),
        })
        .collect()
}

/// What a retry of one key's dead letters comes to.
enum Retry {
    /// Apply this batch.
    Apply(Batch),
    /// It cannot be applied: (code, error).
    Failed(Option<String>, String),
}

/// Entries of a batch, by reference.
type Entries<'a> = Vec<(&'a Key, &'a Entry)>;

fn split_held<'a>(batch: &'a Batch, held: &HashSet<String>) -> (Entries<'a>, Entries<'a>) {
    if held.is_empty() {
        return (batch.entries.iter().collect(), Vec::new());
    }
    batch
        .entries
        .iter()
        .partition(|(k, _)| !held.contains(&key_json(k)))
}

fn held_letters<'a>(hold: &[(&'a Key, &'a Entry)]) -> Vec<Letter<'a>> {
    hold.iter()
        .map(|(k, e)| Letter {
            key: k,
            entry: e,
            status: Status::Held,
            code: None,
            error: "held behind an earlier dead letter of the same key".to_owned(),
        })
        .collect()
}

/// Group requested dead letters by key, in order.
fn by_key(rows: Vec<Stored>) -> BTreeMap<String, Vec<Stored>> {
    let mut map: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
    for r in rows {
        map.entry(r.key.clone()).or_default().push(r);
    }
    map
}
