//! The loop from a replication stream into the projector: push chunks, flush on size,
//! age or an idle stream, and acknowledge the slot only up to what every target has made
//! durable (held back by the replay window).

use std::time::Duration;

use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{ReplicationStream, StreamError, StreamEvent};
use pgprism_leader::slot::slot_ack;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::SinkError;
use crate::projector::{FlushReport, Projector};

/// How soon after the stream goes idle the waiting changes are flushed: long enough to
/// gather a burst, short enough to keep the read models fresh.
pub const IDLE_FLUSH_DELAY: Duration = Duration::from_millis(5);

/// With nothing to flush, still flush this often: idle targets store their offsets (so
/// status stays current) and carry out `pgprism dlq` requests.
pub const IDLE_TICK: Duration = Duration::from_secs(1);

/// Stream events decoded ahead of the projector (each chunk at most 4096 changes / 16 MiB).
pub const READ_AHEAD: usize = 4;

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

/// Drive `projector` from `stream` until `stop` turns true (or `opts.until` is reached);
/// what was pushed is flushed and acknowledged before returning. `on_flush` sees every
/// flush (for metrics and logs).
pub async fn drive(
    projector: &mut Projector,
    stream: &mut ReplicationStream,
    stop: &mut watch::Receiver<bool>,
    opts: &DriveOptions,
    mut on_flush: impl FnMut(&FlushReport),
) -> Result<(), DriveError> {
    let acker = stream.acker();
    // Decoding overlaps sink writes: a reader fills a small bounded queue while a flush
    // waits on the sinks, so memory stays bounded by the queue when a sink is slow.
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
    let mut idle_at: Option<Instant> = None;
    let mut wal_end = Lsn(0);
    let mut last_flush = Instant::now();
    let done = |p: &Projector, wal_end: Lsn| {
        opts.until
            .is_some_and(|u| p.ack_lsn() >= u || (wal_end >= u && !p.has_unflushed()))
    };
    let consume = async {
        loop {
            if *stop.borrow() || done(projector, wal_end) {
                return Ok(());
            }
            let deadline = match (projector.flush_deadline(), idle_at) {
                (Some(a), Some(i)) => Instant::from_std(a).min(i),
                (Some(a), None) => Instant::from_std(a),
                (None, _) => last_flush + IDLE_TICK,
            };
            let ev = tokio::select! {
                // Stop first: a stop request must not wait behind a busy stream. Then the
                // flush deadline, so a busy stream never delays a due flush.
                biased;
                _ = stop.changed() => continue,
                () = tokio::time::sleep_until(deadline) => {
                    idle_at = None;
                    last_flush = Instant::now();
                    let report = projector.flush().await?;
                    on_flush(&report);
                    acker.ack(slot_ack(projector.ack_lsn(), opts.replay_window));
                    continue;
                }
                ev = rx.recv() => match ev {
                    Some(ev) => ev?,
                    None => return Err(DriveError::Stream(StreamError::Protocol("the stream reader stopped".into()))),
                },
            };
            match ev {
                StreamEvent::Chunk(chunk) => {
                    // Transactions commit in order: this one and all later are past `until`.
                    if opts.until.is_some_and(|u| chunk.txn.commit_lsn >= u) {
                        return Ok(());
                    }
                    if let Some(report) = projector.push(&chunk).await? {
                        last_flush = Instant::now();
                        on_flush(&report);
                        acker.ack(slot_ack(projector.ack_lsn(), opts.replay_window));
                    }
                }
                StreamEvent::Idle => {
                    // A pause of the stream while catching up is not the end of the
                    // backlog: flushing then would keep batches small when they should be
                    // large. Near real time, flush soon for freshness.
                    if projector.has_unflushed() && idle_at.is_none() && !projector.catching_up() {
                        idle_at = Some(Instant::now() + IDLE_FLUSH_DELAY);
                    }
                }
                StreamEvent::Keepalive { wal_end: end } => {
                    wal_end = end;
                    if projector.has_unflushed() {
                        idle_at = None;
                        last_flush = Instant::now();
                        let report = projector.flush().await?;
                        on_flush(&report);
                    }
                    acker.ack(slot_ack(projector.ack_lsn(), opts.replay_window));
                }
                StreamEvent::Message(_) => {}
            }
        }
    };
    let result: Result<(), DriveError> = tokio::select! {
        r = consume => r,
        () = &mut reader => unreachable!("the reader never ends by itself"),
    };
    if result.is_ok() && projector.has_unflushed() {
        let report = projector.flush().await?;
        on_flush(&report);
        acker.ack(slot_ack(projector.ack_lsn(), opts.replay_window));
    }
    result
}
