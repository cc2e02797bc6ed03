//! The replication slot as a shared resource: taking it over from a dead leader's
//! walsender, and knowing how far back it can still replay.
//!
//! **Takeover.** A leader that died without closing its connection cleanly (network cut,
//! host gone) can leave its walsender running until `wal_sender_timeout`; while it runs the
//! slot is `active` and `START_REPLICATION` fails with SQLSTATE 55006. The new leader waits
//! for the slot to become free and, once it has been held by the same backend for
//! `takeover_after`, terminates that backend. The fence keeps this safe even if the holder
//! was not dead after all: its sink writes carry an older epoch.
//!
//! **Replay.** Postgres never decodes a slot from before its confirmed position: a
//! `START_REPLICATION` at an older LSN silently starts at `confirmed_flush_lsn`. So the
//! oldest LSN a replay can reach is the slot's confirmed position, and pgprism keeps that
//! behind the sinks' offsets by the configured replay window ([`slot_ack`]).

use std::time::{Duration, Instant};

use pgprism_decoder::Lsn;
use tokio_postgres::Client;

use crate::LeaderError;

/// What the slot looks like to a new leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// The slot's confirmed position: the oldest LSN it can replay from.
    pub confirmed_flush: Lsn,
    /// The oldest WAL the slot retains for decoding.
    pub restart_lsn: Option<Lsn>,
    /// `pg_replication_slots.wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: Option<String>,
}

async fn read(
    client: &Client,
    slot: &str,
) -> Result<Option<(Option<i32>, SlotState)>, LeaderError> {
    let row = client
        .query_opt(
            "SELECT active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(LeaderError::db("reading the replication slot"))?;
    let Some(row) = row else { return Ok(None) };
    let lsn =
        |i: usize| -> Option<Lsn> { row.get::<_, Option<&str>>(i).and_then(|s| s.parse().ok()) };
    Ok(Some((
        row.get(0),
        SlotState {
            confirmed_flush: lsn(1).unwrap_or(Lsn::ZERO),
            restart_lsn: lsn(2),
            wal_status: row.get(3),
        },
    )))
}

/// Wait until no walsender holds `slot`; once one backend has held it for
/// `takeover_after`, terminate it. `Ok(None)` if the slot does not exist.
pub async fn take_over(
    client: &Client,
    slot: &str,
    takeover_after: Duration,
    poll: Duration,
) -> Result<Option<SlotState>, LeaderError> {
    let mut holder: Option<(i32, Instant)> = None;
    loop {
        let Some((active_pid, state)) = read(client, slot).await? else {
            return Ok(None);
        };
        let Some(pid) = active_pid else {
            return Ok(Some(state));
        };
        let since = match holder {
            Some((p, since)) if p == pid => since,
            _ => {
                tracing::info!(
                    slot,
                    pid,
                    "replication slot is held by another walsender; waiting"
                );
                let now = Instant::now();
                holder = Some((pid, now));
                now
            }
        };
        if since.elapsed() >= takeover_after {
            tracing::warn!(
                slot,
                pid,
                held_for_s = since.elapsed().as_secs_f64(),
                "terminating the walsender still holding the replication slot"
            );
            client
                .query("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(LeaderError::db("terminating the slot's walsender"))?;
        }
        tokio::time::sleep(poll).await;
    }
}

/// The oldest LSN `slot` can replay from, or `None` if the slot does not exist.
pub async fn oldest_replayable(client: &Client, slot: &str) -> Result<Option<Lsn>, LeaderError> {
    Ok(read(client, slot).await?.map(|(_, s)| s.confirmed_flush))
}

/// Refuse a replay the slot can no longer serve, naming the oldest LSN it can and the way out.
pub fn check_replay(slot: &str, from: Lsn, oldest: Lsn) -> Result<(), LeaderError> {
    if from < oldest {
        return Err(LeaderError::NotReplayable {
            slot: slot.to_owned(),
            from,
            oldest,
        });
    }
    Ok(())
}

/// The position to acknowledge to the slot: the smallest durable offset over all sinks,
/// held back by `replay_window` bytes of WAL so a replay can still reach that far.
pub fn slot_ack(min_durable: Lsn, replay_window: u64) -> Lsn {
    Lsn(min_durable.0.saturating_sub(replay_window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_holds_the_ack_back() {
        assert_eq!(slot_ack(Lsn(1000), 0), Lsn(1000));
        assert_eq!(slot_ack(Lsn(1000), 300), Lsn(700));
        assert_eq!(slot_ack(Lsn(100), 300), Lsn(0));
    }

    #[test]
    fn replay_before_the_slot_is_refused_with_the_way_out() {
        assert!(check_replay("s", Lsn(500), Lsn(500)).is_ok());
        let err = check_replay("s", Lsn(0x10), Lsn(0x1_0000_0020))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0/10") && err.contains("1/20") && err.contains("rebuild"),
            "{err}"
        );
    }
}
