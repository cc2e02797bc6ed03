//! What `pgprism status` shows: the leader and its epoch, the slot, and every target's
//! offset and lag — read without taking part (no stamping, no locks).

use std::time::Duration;

use pgprism_decoder::Lsn;
use pgprism_leader::redis_fence::offset_key;
use serde::Serialize;

use crate::error::SinkError;
use crate::lane::connect;
use crate::projector::ProjectorConfig;
use crate::spec::Sink;

/// The pipeline as seen from outside.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The pipeline.
    pub pipeline: String,
    /// The current epoch (`None`: no leader ever ran).
    pub epoch: Option<i64>,
    /// The replica recorded as leader.
    pub leader: Option<String>,
    /// Seconds since the leader's last heartbeat.
    pub heartbeat_age_s: Option<f64>,
    /// The source's current WAL position.
    pub wal_lsn: String,
    /// The slot, if it exists.
    pub slot: Option<SlotStatus>,
    /// Every target.
    pub targets: Vec<TargetOffset>,
}

/// The replication slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// Its name.
    pub name: String,
    /// Whether a walsender streams it now.
    pub active: bool,
    /// Confirmed position: the oldest LSN a replay can reach.
    pub confirmed_flush_lsn: Option<String>,
    /// Bytes of WAL the slot keeps on the primary.
    pub retained_wal_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

/// One target's position.
#[derive(Debug, Clone, Serialize)]
pub struct TargetOffset {
    /// The target's name.
    pub name: String,
    /// Its sink.
    pub sink: String,
    /// Where it resumes (`None`: never written).
    pub resume_lsn: Option<String>,
    /// Changes of the transaction at `resume_lsn` already applied (0: none pending).
    pub changes_done: Option<i64>,
    /// Epoch of the leader that last wrote it.
    pub epoch: Option<i64>,
    /// Bytes of WAL between its offset and the source's current position.
    pub lag_bytes: Option<u64>,
    /// Dead letters waiting.
    pub dead_letters: Option<i64>,
    /// Its backfill of existing rows (`None`: none ever ran, e.g. a target from before
    /// backfills existed or with `backfill.initial = false`).
    pub backfill: Option<crate::backfill::BackfillState>,
    /// A `pgprism rebuild` in progress: the shadow's backfill.
    pub rebuild: Option<crate::backfill::BackfillState>,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

/// Read the status of the pipeline in `cfg` (`slot`: the replication slot's name).
pub async fn read(cfg: &ProjectorConfig, slot: &str) -> Result<Status, SinkError> {
    let source = connect(&cfg.source.named("pgprism source"), "source").await?;
    let pipeline = source
        .query_opt(
            "SELECT epoch, leader, extract(epoch FROM clock_timestamp() - heartbeat_at)::float8
               FROM pgprism.pipelines WHERE name = $1",
            &[&cfg.pipeline],
        )
        .await
        .ok()
        .flatten();
    let wal: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(SinkError::pg("source", "reading the WAL position"))?
        .get(0);
    let wal_lsn: Lsn = wal.parse().unwrap_or_default();
    let slot_row = source
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - restart_lsn)::int8, wal_status
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(SinkError::pg("source", "reading the slot"))?;
    let mut targets = Vec::new();
    for p in &cfg.projections {
        for t in &p.targets {
            let name = t.name_in(&p.name);
            let mut out = TargetOffset {
                name: name.clone(),
                sink: t.sink.clone(),
                resume_lsn: None,
                changes_done: None,
                epoch: None,
                lag_bytes: None,
                dead_letters: None,
                backfill: None,
                rebuild: None,
                error: None,
            };
            let read = read_target(cfg, &source, &name, &t.sink, &mut out).await;
            if let Err(e) = read {
                out.error = Some(e.to_string());
            }
            out.lag_bytes = out
                .resume_lsn
                .as_deref()
                .and_then(|l| l.parse::<Lsn>().ok())
                .map(|l| wal_lsn.0.saturating_sub(l.0));
            targets.push(out);
        }
    }
    Ok(Status {
        pipeline: cfg.pipeline.clone(),
        epoch: pipeline.as_ref().map(|r| r.get(0)),
        leader: pipeline.as_ref().and_then(|r| r.get(1)),
        heartbeat_age_s: pipeline.as_ref().and_then(|r| r.get(2)),
        wal_lsn: wal,
        slot: slot_row.map(|r| SlotStatus {
            name: slot.to_owned(),
            active: r.get(0),
            confirmed_flush_lsn: r.get(1),
            retained_wal_bytes: r.get(2),
            wal_status: r.get(3),
        }),
        targets,
    })
}

async fn read_target(
    cfg: &ProjectorConfig,
    source: &tokio_postgres::Client,
    name: &str,
    sink: &str,
    out: &mut TargetOffset,
) -> Result<(), SinkError> {
    let Some(spec) = cfg.sinks.get(sink) else {
        return Err(SinkError::config(name, format!("no sink named {sink:?}")));
    };
    let dead_letters_in = match spec
        .resolve(sink)
        .map_err(|e| SinkError::config(name, e.to_string()))?
    {
        Sink::Postgres { dsn } => {
            let client = connect(&dsn.named(&format!("pgprism sink {name}")), name).await?;
            let row = client
                .query_opt(
                    "SELECT resume_lsn::text, changes_done, epoch, backfill,
                            (SELECT backfill FROM pgprism.offsets
                              WHERE pipeline = $1 AND sink = $3)
                       FROM pgprism.offsets WHERE pipeline = $1 AND sink = $2",
                    &[&cfg.pipeline, &name, &crate::rebuild::shadow_target(name)],
                )
                .await
                .ok()
                .flatten();
            if let Some(r) = row {
                out.resume_lsn = Some(r.get(0));
                out.changes_done = Some(r.get(1));
                out.epoch = Some(r.get(2));
                out.backfill = r
                    .get::<_, Option<String>>(3)
                    .and_then(|t| serde_json::from_str(&t).ok());
                out.rebuild = r
                    .get::<_, Option<String>>(4)
                    .and_then(|t| serde_json::from_str(&t).ok());
            }
            Some(client)
        }
        Sink::Redis { url, ca_file } => {
            let client = crate::redis::open(url, ca_file, name)?;
            let mut conn = tokio::time::timeout(
                Duration::from_secs(5),
                client.get_multiplexed_async_connection(),
            )
            .await
            .map_err(|_| SinkError::config(name, "Redis did not answer within 5 s"))?
            .map_err(SinkError::redis(name, "connecting to Redis"))?;
            let (epoch, lsn, n, backfill): (
                Option<i64>,
                Option<String>,
                Option<i64>,
                Option<String>,
            ) = redis::cmd("HMGET")
                .arg(offset_key(&cfg.pipeline, name))
                .arg("epoch")
                .arg("resume_lsn")
                .arg("changes_done")
                .arg("backfill")
                .query_async(&mut conn)
                .await
                .map_err(SinkError::redis(name, "reading the offset"))?;
            out.epoch = epoch;
            out.backfill = backfill.and_then(|t| serde_json::from_str(&t).ok());
            out.changes_done = n;
            out.resume_lsn = lsn
                .and_then(|h| u64::from_str_radix(&h, 16).ok())
                .map(|v| Lsn(v).to_string());
            None
        }
    };
    let dl_client = dead_letters_in.as_ref().unwrap_or(source);
    if let Ok(row) = dl_client
        .query_one(
            "SELECT count(*) FROM pgprism.dead_letters WHERE pipeline = $1 AND target = $2",
            &[&cfg.pipeline, &name],
        )
        .await
    {
        out.dead_letters = Some(row.get(0));
    }
    Ok(())
}
