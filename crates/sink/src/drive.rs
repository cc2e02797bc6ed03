//! The loop from a replication stream into the projector, and when it flushes.
//!
//! **Group commit.** A flush starts as soon as changes are waiting and no flush runs; while
//! it runs, the stream keeps being read into an inbox, and when it has committed, the
//! inbox is routed and flushed at once. So batches follow the load: at a low rate each
//! transaction is flushed as it arrives (no fixed wait), and when transactions arrive
//! faster than one flush takes, the next batch holds everything that arrived during the
//! previous flush — the batch grows until flushing keeps up.
//!
//! **Catching up** (the oldest change not yet durable committed more than `target_lag`
//! ago: a backlog, or a load the flushes fell behind): batches fill up to the adaptive
//! size, which doubles while it lasts, and are flushed when full, when the stream has
//! reached the server's head (a keepalive came after the last transaction: the walsender
//! sends one when it waits for WAL), or when the batch has waited `max_age`. Flushing
//! whatever the stream delivered meanwhile would spend on small flushes the CPU the
//! backlog's decoding needs.
//!
//! Keepalives are never a reason to flush by themselves: one arrives after nearly every
//! transaction under a steady load, and a flush on each would mean one flush per
//! transaction however far behind the projection is. Nor is stream idleness.
//!
//! Memory stays bounded: the inbox takes at most a batch's worth of changes and
//! [`INBOX_BYTES`] of change data, then the stream waits (its reader's queue and the
//! transport's buffer are bounded too). The slot is acknowledged only up to what every
//! target has made durable (held back by the replay window).

use std::collections::VecDeque;
use std::time::Duration;

use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{Acker, ReplicationStream, StreamError, StreamEvent, TxnChunk};
use pgprism_leader::slot::slot_ack;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::SinkError;
use crate::projector::{FlushReport, Projector};

/// With nothing to flush, still flush this often: idle targets store their offsets (so
/// status stays current) and carry out `pgprism dlq` requests.
pub const IDLE_TICK: Duration = Duration::from_secs(1);

/// Stream events decoded ahead of the projector (each chunk at most 4096 changes / 16 MiB).
pub const READ_AHEAD: usize = 4;

/// Most bytes of change data held in the inbox while a flush runs.
pub const INBOX_BYTES: usize = 64 << 20;

/// Where [`drive`] takes decoded transactions from, in commit order, and where it
/// acknowledges what every target has made durable. The replication stream is one
/// ([`ReplicationStream`]: reconnects, resume dedup, standby status updates); the loop
/// knows nothing else of it, so tests can drive the projector from recorded events.
pub trait ChangeSource {
    /// Takes acknowledgements while the source is being read.
    type Acker: Acknowledge;
    /// The acknowledgement handle.
    fn acker(&self) -> Self::Acker;
    /// The next event: a chunk of a transaction, a message, a keepalive or idleness.
    fn next(&mut self) -> impl Future<Output = Result<StreamEvent, StreamError>>;
}

/// Receives the position up to which everything is durable in every target (minus the
/// replay window); positions never go back.
pub trait Acknowledge {
    /// Everything before `lsn` is durable.
    fn ack(&self, lsn: Lsn);
}

impl ChangeSource for ReplicationStream {
    type Acker = Acker;

    fn acker(&self) -> Acker {
        ReplicationStream::acker(self)
    }

    fn next(&mut self) -> impl Future<Output = Result<StreamEvent, StreamError>> {
        ReplicationStream::next(self)
    }
}

impl Acknowledge for Acker {
    fn ack(&self, lsn: Lsn) {
        Acker::ack(self, lsn);
    }
}

/// Why driving stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// A sink failed (fatal, or fenced: step down).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The stream failed and could not reconnect.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Options of [`drive`].
#[derive(Debug, Clone, Default)]
pub struct DriveOptions {
    /// Bytes of WAL the slot keeps behind the durable position, for replays.
    pub replay_window: u64,
    /// Return once every transaction committed before this LSN is durable, without
    /// applying any that committed at or after it (tests, `replay --until`).
    pub until: Option<Lsn>,
}

/// Chunks received while the projector was busy flushing, oldest first.
#[derive(Debug, Default)]
struct Inbox {
    chunks: VecDeque<TxnChunk>,
    changes: usize,
    bytes: usize,
    /// The newest keepalive position seen between transactions.
    wal_end: Lsn,
    /// The newest non-transactional logical message: every transaction committed before
    /// it arrived before it.
    delivered: Lsn,
    /// A transaction at or past `until` arrived: take nothing more.
    past_until: bool,
    /// The last event was a keepalive between transactions: the server had nothing more
    /// to send (the walsender sends one when it waits for WAL), so everything committed
    /// so far has arrived.
    at_head: bool,
}

impl Inbox {
    /// Whether it may take another event: below a batch's worth of changes and the byte cap.
    fn has_room(&self, batch: usize) -> bool {
        !self.past_until && self.changes < batch.max(1) && self.bytes < INBOX_BYTES
    }

    /// Take an event from the stream.
    fn accept(&mut self, ev: StreamEvent, until: Option<Lsn>) {
        match ev {
            StreamEvent::Chunk(chunk) => {
                // Transactions commit in order: this one and all later are past `until`.
                if until.is_some_and(|u| chunk.txn.commit_lsn >= u) {
                    self.past_until = true;
                    return;
                }
                self.at_head = false;
                // An empty chunk (a transaction with nothing decoded) still counts once.
                self.changes += chunk.changes.len().max(1);
                self.bytes += chunk.bytes;
                self.chunks.push_back(chunk);
            }
            StreamEvent::Keepalive { wal_end } => {
                self.wal_end = self.wal_end.max(wal_end);
                self.at_head = true;
            }
            StreamEvent::Message(m) => self.delivered = self.delivered.max(m.lsn),
            StreamEvent::Idle => {}
        }
    }

    fn pop(&mut self) -> Option<TxnChunk> {
        let chunk = self.chunks.pop_front()?;
        self.changes -= chunk.changes.len().max(1);
        self.bytes -= chunk.bytes;
        Some(chunk)
    }

    /// The commit time of the oldest chunk held.
    fn oldest_commit(&self) -> Option<i64> {
        self.chunks.front().map(|c| c.txn.commit_time)
    }
}

/// Drive `projector` from `stream` until `stop` turns true (or `opts.until` is reached);
/// what was pushed is flushed and acknowledged before returning. `on_flush` sees every
/// flush (for metrics and logs).
pub async fn drive(
    projector: &mut Projector,
    stream: &mut impl ChangeSource,
    stop: &mut watch::Receiver<bool>,
    opts: &DriveOptions,
    mut on_flush: impl FnMut(&FlushReport),
) -> Result<(), DriveError> {
    let acker = stream.acker();
    let clock = projector.lag_clock();
    // Decoding overlaps sink writes: a reader fills a small bounded queue while a flush
    // waits on the sinks.
    let (tx, mut rx) = mpsc::channel::<Result<StreamEvent, StreamError>>(READ_AHEAD);
    let reader = async {
        loop {
            let ev = stream.next().await;
            let failed = ev.is_err();
            if tx.send(ev).await.is_err() || failed {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(reader);
    let closed = || DriveError::Stream(StreamError::Protocol("the stream reader stopped".into()));
    let mut inbox = Inbox::default();
    let mut last_flush = Instant::now();
    let consume = async {
        loop {
            // The projector is free: route what arrived while it was flushing — at most a
            // batch (the inbox's bound), so it is flushed as one.
            while let Some(chunk) = inbox.pop() {
                clock.set_queued(inbox.oldest_commit());
                projector.route(&chunk).await?;
            }
            clock.set_queued(None);
            projector.note_delivered(inbox.delivered);
            acker.ack(slot_ack(projector.ack_lsn(), opts.replay_window));
            // With `until`, existing rows count as committed before it: a backfill finishes.
            let until_done = !projector.backfilling()
                && opts.until.is_some_and(|u| {
                    projector.ack_lsn() >= u || (inbox.wal_end >= u && !projector.has_unflushed())
                });
            if inbox.past_until && projector.backfilling() && !*stop.borrow() {
                // Nothing more is taken from the stream: finish loading existing rows
                // with explicit flushes, at the backfill's pace.
                if let Some(due) = projector.backfill_due() {
                    tokio::time::sleep_until(Instant::from_std(due)).await;
                }
                let report = projector.flush().await?;
                on_flush(&report);
                continue;
            }
            if *stop.borrow() || until_done || inbox.past_until {
                return Ok(());
            }
            let waiting = projector.pending();
            // A backfill chunk due goes now, whatever waits (a batch filling while catching
            // up would otherwise hold the backfill to one chunk per `max_age`).
            let chunk_due = projector
                .backfill_due()
                .is_some_and(|d| Instant::from_std(d) <= Instant::now());
            let batch_due = waiting > 0
                && (!projector.catching_up()
                    || waiting >= projector.batch_size()
                    || inbox.at_head
                    || projector
                        .flush_deadline()
                        .is_some_and(|d| Instant::from_std(d) <= Instant::now()));
            let flush = if batch_due || chunk_due {
                // Group commit: what waits is flushed now — near real time at once, while
                // catching up once the batch is full, the stream has reached the server's
                // head, or the batch has waited `max_age`. Postgres mirror batches apply
                // in the background while the next ones are routed.
                Some(true)
            } else if waiting > 0 {
                // Catching up: the batch fills.
                None
            } else if projector.has_unflushed() && rx.is_empty() {
                // Only background flushes are left and the stream is quiet: wait for them,
                // so the offsets and the slot's acknowledgement move.
                Some(false)
            } else if last_flush.elapsed() >= IDLE_TICK {
                Some(false)
            } else {
                None
            };
            let Some(behind) = flush else {
                // Nothing to write yet: wait for the stream (or, catching up, for the
                // batch's deadline).
                let due = match projector.flush_deadline() {
                    Some(d) if waiting > 0 => Instant::from_std(d),
                    _ => last_flush + IDLE_TICK,
                };
                let due = match projector.backfill_due() {
                    Some(b) => due.min(Instant::from_std(b)),
                    None => due,
                };
                let ev = tokio::select! {
                    // Stop first: a stop request must not wait behind a busy stream. The
                    // stream before the deadline: a due batch is seen at the loop's top.
                    biased;
                    _ = stop.changed() => continue,
                    ev = rx.recv() => ev.ok_or_else(closed)??,
                    () = tokio::time::sleep_until(due) => continue,
                };
                inbox.accept(ev, opts.until);
                continue;
            };
            // The stream is read into the inbox while the flush runs (up to a batch).
            let room = projector.batch_size();
            let flushing = projector.flush_group(behind);
            tokio::pin!(flushing);
            let report = loop {
                tokio::select! {
                    // The flush first: once it is done, what arrived is routed at once.
                    biased;
                    r = &mut flushing => break r?,
                    ev = rx.recv(), if inbox.has_room(room) => {
                        inbox.accept(ev.ok_or_else(closed)??, opts.until);
                        clock.set_queued(inbox.oldest_commit());
                    }
                }
            };
            last_flush = Instant::now();
            on_flush(&report);
        }
    };
    let result: Result<(), DriveError> = tokio::select! {
        r = consume => r,
        () = &mut reader => unreachable!("the reader never ends by itself"),
    };
    if result.is_ok() && (projector.has_unflushed() || projector.holds_changes()) {
        let report = projector.flush().await?;
        on_flush(&report);
        acker.ack(slot_ack(projector.ack_lsn(), opts.replay_window));
    }
    result
}
