//! The replay transaction: after a rewind, a Postgres target applies everything up to its
//! old offset in one transaction held open across flushes (each flush *accepted*, none
//! durable), so readers never see the read model go back; it commits when the replay
//! reaches the old offset. Redis targets need none: their per-key guards keep every key
//! where it is.

use pgprism_leader::Offset;

use super::*;

impl Lane {
    /// Whether a replay transaction with earlier flushes in it is open.
    pub(super) fn replay_open(&self) -> bool {
        matches!(&self.writer, Writer::Postgres(w) if w.replay_flushes > 0)
    }

    pub(super) async fn abandon_replay(&mut self) {
        if let Writer::Postgres(w) = &mut self.writer {
            roll_back(&w.client, &w.table, &mut w.in_tx).await;
            w.replay_flushes = 0;
        }
        self.covered = self.stored;
        self.pending = None;
        self.pending_changes = 0;
    }

    /// Rewind this lane's offset to `to` (a replay; never forward: a lane behind `to`
    /// keeps its offset); the caller restarts the stream.
    pub(crate) async fn rewind(&mut self, to: Offset) -> Result<(), SinkError> {
        self.settle().await?;
        let to = to.min(self.stored);
        if self.replay_open() {
            self.abandon_replay().await;
        }
        self.writer.rewind(&self.name, to).await?;
        // Postgres applies the replay in one transaction until it reaches the old offset
        // again; Redis's per-key guards need no such thing.
        if self.writer.replays_in_one_transaction() && self.stored > to {
            self.replay_until = Some(self.replay_until.unwrap_or(self.stored).max(self.stored));
        }
        self.pending = None;
        self.pending_changes = 0;
        self.stored = to;
        self.covered = to;
        self.ackable = acknowledgeable(to);
        Ok(())
    }
}
