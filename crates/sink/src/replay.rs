//! Replay from a saved LSN: re-apply changes to chosen targets without stopping the
//! pipeline by hand.
//!
//! 1. Check the slot can still deliver from the LSN (Postgres never decodes before the
//!    slot's confirmed position; pgprism keeps that behind the offsets by the replay
//!    window). If not, refuse, naming the oldest replayable LSN and the way out.
//! 2. Hold the pipeline ([`pgprism_leader::hold_offsets`]) until the rewind is done: a
//!    leader that starts meanwhile (the one deposed below campaigns again at once) waits
//!    before it stamps its own, newer epoch, which would fence the rewind half-way.
//! 3. Take a new epoch ([`pgprism_leader::supersede`]): the running leader loses at its
//!    next heartbeat, and once the epoch is stamped on a target the old leader's commits
//!    to it are fenced.
//! 4. Stamp and rewind each chosen target's offset to the LSN, under the new epoch (a
//!    target already behind the LSN keeps its offset).
//!
//! The next leader resumes from the rewound offsets and re-applies. What a target sees:
//! Redis keys never move back (per-key guards); query projections recompute current state;
//! a Postgres mirror re-applies old row versions until the replay passes its old position.

use pgprism_decoder::Lsn;
use pgprism_leader::slot::{check_replay, oldest_replayable};
use pgprism_leader::{Epoch, LeaderError, Offset, hold_offsets, supersede};

use crate::error::SinkError;
use crate::lane::connect;
use crate::projector::{Projector, ProjectorConfig, TargetStatus};

/// What a replay rewound.
#[derive(Debug, Clone)]
pub struct Rewound {
    /// The epoch the rewind was made under (the next leader's is larger).
    pub epoch: Epoch,
    /// The targets rewound, with their offsets before and after.
    pub targets: Vec<(String, Offset, Offset)>,
}

/// Rewind the targets named in `only` (target or sink names; all when empty) of the
/// pipeline in `cfg` to `from`, so that the leader re-applies every transaction that
/// committed at or after it. `cfg.epoch` is ignored: a new one is taken. A leader starting
/// while the rewind runs waits for it.
pub async fn rewind(
    cfg: &ProjectorConfig,
    slot: &str,
    from: Lsn,
    only: &[String],
) -> Result<Rewound, SinkError> {
    let source = connect(&cfg.source.named("pgprism source"), "source").await?;
    let Some(oldest) = oldest_replayable(&source, slot).await? else {
        return Err(SinkError::config(
            "replay",
            format!("replication slot {slot:?} does not exist; there is nothing to replay from"),
        ));
    };
    check_replay(slot, from, oldest)?;
    // Every name must be known before anything changes: a typo must not depose the leader.
    let targets: Vec<(String, String)> = cfg
        .projections
        .iter()
        .flat_map(|p| {
            p.targets
                .iter()
                .map(|t| (t.name_in(&p.name), t.sink.clone()))
        })
        .collect();
    if let Some(unknown) = only
        .iter()
        .find(|n| !targets.iter().any(|(t, s)| t == *n || s == *n))
    {
        let known: Vec<&str> = targets.iter().map(|(t, _)| t.as_str()).collect();
        return Err(SinkError::config(
            "replay",
            format!(
                "no target or sink named {unknown:?} (targets: {})",
                known.join(", ")
            ),
        ));
    }
    // Until this session ends, with the rewind done: the leader our new epoch deposes
    // campaigns again at once, and its stamps would fence the rewind half-way.
    hold_offsets(&source, cfg.lock_key).await?;
    let epoch = supersede(&source, &cfg.pipeline).await?;
    let mut cfg = cfg.clone();
    cfg.epoch = epoch;
    let mut projector = Projector::start(&cfg).await.map_err(|e| match e {
        SinkError::Leader(LeaderError::Fenced { .. }) => SinkError::config(
            "replay",
            "another replay or a new leader took over while rewinding; run the replay again",
        ),
        e => e,
    })?;
    let before: Vec<TargetStatus> = projector.targets();
    let chosen: Vec<String> = before
        .iter()
        .filter(|t| only.is_empty() || only.contains(&t.name) || only.contains(&t.sink))
        .map(|t| t.name.clone())
        .collect();
    projector
        .rewind(Offset::after_transaction(from), &chosen)
        .await?;
    let after = projector.targets();
    let targets = before
        .into_iter()
        .zip(after)
        .filter(|(b, _)| chosen.contains(&b.name))
        .map(|(b, a)| (b.name, b.offset, a.offset))
        .collect();
    Ok(Rewound { epoch, targets })
}
