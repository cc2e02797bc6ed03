//! Advisory-lock election with epochs, heartbeats, and takeover of a stuck leader.
//!
//! Each replica campaigns on its own plain session to the source. The lock is
//! session-level, so it lasts exactly as long as that session: if the leader's process
//! dies, Postgres sees the socket close, ends the backend, and the lock is free within
//! one `retry_interval` of a standby.
//!
//! A leader that is alive at the TCP level but frozen (SIGSTOP, a GC-style pause, a hung
//! disk) keeps its lock. Its heartbeat (`pgprism.pipelines.heartbeat_at`, written with the
//! server's clock, so replica clock skew does not matter) goes stale; a standby that sees
//! it older than `takeover_after` terminates the lock holder's backend, found in
//! `pg_locks`, and takes the lock. When the frozen leader wakes up its session is gone:
//! it learns it lost, and its pending sink commits fail the fence in any case.

use std::time::Duration;

use pgprism_pg::Dsn;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::{Epoch, LeaderError, schema};

/// Default interval between a standby's attempts to take the lock.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Default interval between the leader's heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default age of the heartbeat after which a standby replaces the leader.
pub const DEFAULT_TAKEOVER_AFTER: Duration = Duration::from_secs(5);

/// Election settings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// The pipeline whose leader is elected (any text; it is only ever a parameter).
    pub pipeline: String,
    /// This replica's name, shown in `pgprism.pipelines.leader`.
    pub replica_id: String,
    /// Interval between a standby's attempts.
    pub retry_interval: Duration,
    /// Interval between the leader's heartbeats.
    pub heartbeat_interval: Duration,
    /// Heartbeat age after which a standby terminates the leader's session.
    pub takeover_after: Duration,
    /// The advisory lock key; derived from the pipeline name when `None`.
    pub lock_key: Option<i64>,
}

impl LeaderConfig {
    /// Defaults for everything but the names.
    pub fn new(pipeline: impl Into<String>, replica_id: impl Into<String>) -> LeaderConfig {
        LeaderConfig {
            pipeline: pipeline.into(),
            replica_id: replica_id.into(),
            retry_interval: DEFAULT_RETRY_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            takeover_after: DEFAULT_TAKEOVER_AFTER,
            lock_key: None,
        }
    }

    fn key(&self) -> i64 {
        self.lock_key.unwrap_or_else(|| lock_key(&self.pipeline))
    }
}

/// The advisory lock key of a pipeline: FNV-1a (64 bit) of its name in UTF-8, stable
/// across versions, platforms and processes (unlike `std`'s hasher).
pub fn lock_key(pipeline: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = pipeline
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// A replica's candidacy for one pipeline.
#[derive(Debug)]
pub struct Election {
    cfg: LeaderConfig,
    dsn: Dsn,
}

/// Being the leader. Dropping it ends the lock session, which releases the lock.
#[derive(Debug)]
pub struct Leadership {
    epoch: Epoch,
    succession: Succession,
    lost: watch::Receiver<bool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// How a leader came to lead: which way the lock became free, and whom it followed.
#[derive(Debug, Clone, PartialEq)]
pub struct Succession {
    /// The way the lock became free.
    pub via: Via,
    /// The replica that led before, as `pgprism.pipelines` named it (`None` for the first).
    pub previous: Option<String>,
    /// How old the previous leader's last heartbeat was when the lock was taken.
    pub previous_heartbeat_age: Option<Duration>,
}

/// The way the lock became free for a new leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The pipeline never had a leader.
    First,
    /// The previous leader's session ended by itself (a clean stop, a dead process, a lost
    /// connection) while its heartbeat was younger than `takeover_after`: no standby can
    /// have terminated it, as one does that only to an older heartbeat.
    Released,
    /// This replica terminated a leader whose heartbeat was older than `takeover_after`.
    Replaced,
    /// The previous heartbeat was older than `takeover_after` and this replica terminated
    /// nobody: that leader had stopped long before, or another standby terminated it.
    AfterSilence,
}

impl Via {
    /// The word in the `leading` log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::First => "first",
            Via::Released => "lock-released",
            Via::Replaced => "stale-leader-replaced",
            Via::AfterSilence => "after-silence",
        }
    }
}

impl Leadership {
    /// This leader's epoch: stamp it on every sink and pass it to every fenced commit.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// How this replica came to lead.
    pub fn succession(&self) -> &Succession {
        &self.succession
    }

    /// Whether leadership is known lost (session ended, epoch superseded).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once leadership is lost; select on it to stop writing at once.
    pub async fn lost(&mut self) {
        // The sender is dropped only when the heartbeat task ends, which marks it lost first.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Give up leadership now: end the lock session so a standby takes over at once.
    pub async fn release(mut self) {
        self.heartbeat.abort();
        let _ = (&mut self.heartbeat).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl Election {
    /// A candidacy for `cfg.pipeline` on the source at `dsn`.
    pub fn new(cfg: LeaderConfig, dsn: Dsn) -> Election {
        Election { cfg, dsn }
    }

    /// Campaign until this replica leads (`Some`) or `shutdown` becomes true (`None`).
    /// A standby also replaces a leader whose heartbeat is older than `takeover_after`.
    /// A standby keeps its session between attempts and reconnects only when it fails.
    pub async fn campaign(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Option<Leadership>, LeaderError> {
        let key = self.cfg.key();
        let mut standby: Option<Session> = None;
        // Whether this replica terminated a stale leader during this campaign.
        let mut replaced = false;
        loop {
            if *shutdown.borrow() {
                return Ok(None);
            }
            let session = match standby.take() {
                Some(s) if !s.connection.is_finished() => Ok(s),
                _ => self.connect(key).await,
            };
            let attempt = match session {
                Ok(session) => self.try_lead(session, key, &mut replaced).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(Attempt::Lead(leadership)) => return Ok(Some(leadership)),
                Ok(Attempt::Standby(session)) => standby = Some(session),
                Err(e @ LeaderError::LockKeyCollision { .. }) => return Err(e),
                // Wrong TLS settings, credentials or database: retrying will not help.
                Err(e) if e.is_misconfiguration() => return Err(e),
                // The source being unreachable is not fatal for a standby: try again.
                Err(e) => {
                    tracing::warn!(error = %e, pipeline = %self.cfg.pipeline, "election attempt failed")
                }
            }
            // If the shutdown sender is gone nobody can stop us: keep campaigning at the
            // retry interval rather than spinning on the closed channel.
            let stop_requested = async {
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            match standby.take() {
                // A standby queues for the lock for one retry interval: a leader that lets
                // go (stops, crashes, loses its session) is followed at once, not at the
                // next poll. Stopping drops the session, and any lock it got with it.
                Some(session) => tokio::select! {
                    () = stop_requested => {}
                    attempt = self.wait_for_lock(session, key, &mut replaced) => match attempt {
                        Ok(Attempt::Lead(leadership)) => return Ok(Some(leadership)),
                        Ok(Attempt::Standby(session)) => standby = Some(session),
                        Err(e) => {
                            tracing::warn!(error = %e, pipeline = %self.cfg.pipeline, "election attempt failed")
                        }
                    },
                },
                None => tokio::select! {
                    () = stop_requested => {}
                    () = tokio::time::sleep(self.cfg.retry_interval) => {}
                },
            }
        }
    }

    /// Wait up to one retry interval for the lock; then lead, or check for a stuck leader
    /// and stay a standby.
    async fn wait_for_lock(
        &self,
        session: Session,
        key: i64,
        replaced: &mut bool,
    ) -> Result<Attempt, LeaderError> {
        let client = &session.client;
        let wait_ms = self.cfg.retry_interval.as_millis().max(1);
        client
            .batch_execute(&format!("SET lock_timeout = '{wait_ms}ms'"))
            .await
            .map_err(LeaderError::db("waiting for the leader lock"))?;
        let got = client
            .query_one("SELECT pg_advisory_lock($1)", &[&key])
            .await;
        client
            .batch_execute("RESET lock_timeout")
            .await
            .map_err(LeaderError::db("waiting for the leader lock"))?;
        match got {
            Ok(_) => self.lead_with(session, *replaced).await,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                *replaced |= self.replace_stuck_leader(client, key).await?;
                Ok(Attempt::Standby(session))
            }
            Err(e) => Err(LeaderError::db("waiting for the leader lock")(e)),
        }
    }

    /// A new session for the election: state tables exist and our lock key is ours.
    async fn connect(&self, key: i64) -> Result<Session, LeaderError> {
        let (client, connection) = pgprism_pg::connect(&self.dsn.named("pgprism election"))
            .await
            .map_err(LeaderError::db("connecting to the source for the election"))?;
        let session = Session { client, connection };
        schema::ensure_source(&session.client).await?;
        self.register_key(&session.client, key).await?;
        Ok(session)
    }

    /// One attempt on `session`: lead, or replace a stuck leader and stay a standby.
    async fn try_lead(
        &self,
        session: Session,
        key: i64,
        replaced: &mut bool,
    ) -> Result<Attempt, LeaderError> {
        let client = &session.client;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(LeaderError::db("trying the leader lock"))?
            .get(0);
        if !locked {
            *replaced |= self.replace_stuck_leader(client, key).await?;
            return Ok(Attempt::Standby(session));
        }
        self.lead_with(session, *replaced).await
    }

    /// We hold the lock on `session`: take a new epoch and start the heartbeat. `replaced`:
    /// this replica terminated a stale leader while campaigning.
    async fn lead_with(&self, session: Session, replaced: bool) -> Result<Attempt, LeaderError> {
        let client = &session.client;
        // The row as the previous leader left it, read in the same statement (we hold the
        // lock: nobody else writes it but `pgprism replay`, which leaves the heartbeat).
        let row = client
            .query_one(
                "WITH prev AS (
                     SELECT leader, extract(epoch FROM clock_timestamp() - heartbeat_at)::float8 AS age
                       FROM pgprism.pipelines WHERE name = $1)
                 INSERT INTO pgprism.pipelines AS p (name, epoch, leader, leader_pid, heartbeat_at)
                 VALUES ($1, 1, $2, pg_backend_pid(), clock_timestamp())
                 ON CONFLICT (name) DO UPDATE
                    SET epoch = p.epoch + 1, leader = EXCLUDED.leader,
                        leader_pid = EXCLUDED.leader_pid, heartbeat_at = EXCLUDED.heartbeat_at
                 RETURNING epoch, (SELECT leader FROM prev), (SELECT age FROM prev)",
                &[&self.cfg.pipeline, &self.cfg.replica_id],
            )
            .await
            .map_err(LeaderError::db("allocating an epoch"))?;
        let epoch = Epoch(row.get(0));
        let previous: Option<String> = row.get(1);
        let age = row
            .get::<_, Option<f64>>(2)
            .map(|s| Duration::from_secs_f64(s.max(0.0)));
        // A stale leader is terminated only once its heartbeat is `takeover_after` old, and
        // it cannot get younger after that: a younger one means its session ended by itself.
        let via = match age {
            _ if replaced => Via::Replaced,
            None => Via::First,
            Some(a) if a < self.cfg.takeover_after => Via::Released,
            Some(_) => Via::AfterSilence,
        };
        let succession = Succession {
            via,
            previous,
            previous_heartbeat_age: age,
        };
        tracing::info!(
            pipeline = %self.cfg.pipeline,
            epoch = epoch.0,
            replica = %self.cfg.replica_id,
            via = %succession.via.as_str(),
            previous = %succession.previous.as_deref().unwrap_or("-"),
            previous_heartbeat_age_ms = age.map_or(-1, |a| a.as_millis() as i64),
            "leading"
        );
        let (lost_tx, lost_rx) = watch::channel(false);
        // The session is the lock: when it ends, leadership ends.
        let heartbeat = tokio::spawn(heartbeat(
            session,
            self.cfg.pipeline.clone(),
            epoch,
            self.cfg.heartbeat_interval,
            lost_tx,
        ));
        Ok(Attempt::Lead(Leadership {
            epoch,
            succession,
            lost: lost_rx,
            heartbeat,
        }))
    }

    /// Refuse to share a lock key with another pipeline (it would make them exclude each
    /// other, and their leaders' epochs would be unrelated).
    async fn register_key(&self, client: &Client, key: i64) -> Result<(), LeaderError> {
        // Two replicas starting together: the insert of one waits for the other's and then
        // does nothing, while its statement's snapshot cannot see the other's row yet — an
        // empty answer. The next statement sees it.
        let mut row = None;
        for _ in 0..3 {
            row = client
                .query_opt(
                    "WITH ins AS (
                         INSERT INTO pgprism.lock_keys (key, pipeline) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING RETURNING pipeline)
                     SELECT pipeline FROM ins
                     UNION ALL SELECT pipeline FROM pgprism.lock_keys WHERE key = $1
                     LIMIT 1",
                    &[&key, &self.cfg.pipeline],
                )
                .await
                .map_err(LeaderError::db("registering the lock key"))?;
            if row.is_some() {
                break;
            }
        }
        let Some(row) = row else {
            return Err(LeaderError::Corrupt {
                sink: "pgprism.lock_keys".to_owned(),
                detail: format!("lock key {key} neither inserted nor found"),
            });
        };
        let owner: String = row.get(0);
        if owner != self.cfg.pipeline {
            return Err(LeaderError::LockKeyCollision {
                key,
                ours: self.cfg.pipeline.clone(),
                other: owner,
            });
        }
        Ok(())
    }

    /// If the leader's heartbeat is older than `takeover_after`, terminate the backend
    /// holding the lock; the next attempt (ours or another standby's) then gets it.
    /// Whether a backend was terminated.
    ///
    /// One statement checks the heartbeat and terminates only the recorded leader's
    /// backend, and only while it holds the lock: a standby that took the lock a moment
    /// ago (and has not yet recorded itself) is never the one terminated.
    async fn replace_stuck_leader(&self, client: &Client, key: i64) -> Result<bool, LeaderError> {
        // A bigint advisory lock shows in pg_locks as classid = high 32 bits,
        // objid = low 32 bits, objsubid = 1.
        let hi = (key >> 32) & 0xFFFF_FFFF;
        let lo = key & 0xFFFF_FFFF;
        let killed = client
            .query(
                "SELECT p.leader, l.pid,
                        extract(epoch FROM clock_timestamp() - p.heartbeat_at)::float8,
                        pg_terminate_backend(l.pid)
                   FROM pgprism.pipelines p
                   JOIN pg_locks l ON l.pid = p.leader_pid
                  WHERE p.name = $1
                    AND p.heartbeat_at < clock_timestamp() - make_interval(secs => $2)
                    AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND l.classid::bigint = $3 AND l.objid::bigint = $4",
                &[&self.cfg.pipeline, &self.cfg.takeover_after.as_secs_f64(), &hi, &lo],
            )
            .await
            .map_err(LeaderError::db("terminating a stuck leader"))?;
        for row in &killed {
            let leader: Option<String> = row.get(0);
            let pid: i32 = row.get(1);
            let age: f64 = row.get(2);
            tracing::warn!(pipeline = %self.cfg.pipeline, leader = ?leader, pid,
                heartbeat_age_s = age, "leader heartbeat stale; terminated its session");
        }
        Ok(!killed.is_empty())
    }
}

/// Take a new epoch for `pipeline` without leading: what `pgprism replay` does before it
/// rewinds offsets. The running leader (if any) sees its epoch superseded at its next
/// heartbeat and steps down; its sink commits are fenced from the moment the new epoch is
/// stamped on a sink. The next leader takes a still newer epoch and resumes from the
/// rewound offsets.
pub async fn supersede(client: &Client, pipeline: &str) -> Result<Epoch, LeaderError> {
    schema::ensure_source(client).await?;
    let row = client
        .query_one(
            "INSERT INTO pgprism.pipelines AS p (name, epoch) VALUES ($1, 1)
             ON CONFLICT (name) DO UPDATE SET epoch = p.epoch + 1
             RETURNING epoch",
            &[&pipeline],
        )
        .await
        .map_err(LeaderError::db("taking a new epoch"))?;
    Ok(Epoch(row.get(0)))
}

/// The key of the hold `pgprism replay` and `pgprism rebuild` keep on a pipeline's offsets:
/// the leader lock's key in the other key space of advisory locks (two `int4`s), so it
/// never meets a leader lock.
fn offsets_key(key: i64) -> (i32, i32) {
    ((key >> 32) as i32, key as i32)
}

/// Hold the pipeline's offsets, on `client`'s session until it ends: while `pgprism
/// replay` rewinds them (or `pgprism rebuild` records its request) under a new epoch it
/// took, a leader starting meanwhile — the one that epoch deposed campaigns again at once
/// — would stamp a newer epoch on the targets not yet written and fence the command
/// half-way. `key`: the pipeline's leader lock key.
pub async fn hold_offsets(client: &Client, key: i64) -> Result<(), LeaderError> {
    let (hi, lo) = offsets_key(key);
    client
        .execute("SELECT pg_advisory_lock($1, $2)", &[&hi, &lo])
        .await
        .map_err(LeaderError::db("holding the pipeline's offsets"))?;
    Ok(())
}

/// Wait until no replay or rebuild request holds the offsets ([`hold_offsets`]): what a
/// new leader does before it stamps its epoch on the targets. Said in the log when it has
/// to wait, so a command that hangs holding them is not a silent stall.
pub async fn wait_for_offsets(client: &Client, key: i64) -> Result<(), LeaderError> {
    let (hi, lo) = offsets_key(key);
    const WAITING: &str = "waiting for a replay or rebuild request";
    let free: bool = client
        .query_one("SELECT pg_try_advisory_lock_shared($1, $2)", &[&hi, &lo])
        .await
        .map_err(LeaderError::db(WAITING))?
        .get(0);
    if !free {
        tracing::warn!(
            "a replay or rebuild request holds the pipeline's offsets; waiting for it to finish before stamping the targets"
        );
        client
            .execute("SELECT pg_advisory_lock_shared($1, $2)", &[&hi, &lo])
            .await
            .map_err(LeaderError::db(WAITING))?;
    }
    client
        .execute("SELECT pg_advisory_unlock_shared($1, $2)", &[&hi, &lo])
        .await
        .map_err(LeaderError::db(WAITING))?;
    Ok(())
}

/// A plain session to the source and the task driving its connection.
struct Session {
    client: Client,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// The outcome of one attempt.
enum Attempt {
    Lead(Leadership),
    Standby(Session),
}

/// The leader's heartbeat: every `interval`, stamp the heartbeat if our epoch is still the
/// pipeline's. Lost on the first failure, on a newer epoch, or when the session ends.
async fn heartbeat(
    session: Session,
    pipeline: String,
    epoch: Epoch,
    interval: Duration,
    lost: watch::Sender<bool>,
) {
    let Session {
        client,
        connection: mut session,
    } = session;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            // The session ending (terminated, network gone) is noticed without waiting for
            // the next heartbeat.
            ended = &mut session => break format!("lock session ended: {ended:?}"),
            _ = tick.tick() => {
                match client
                    .execute(
                        "UPDATE pgprism.pipelines SET heartbeat_at = clock_timestamp()
                          WHERE name = $1 AND epoch = $2",
                        &[&pipeline, &epoch.0],
                    )
                    .await
                {
                    Ok(1) => {}
                    Ok(_) => break "a newer epoch took over".to_owned(),
                    Err(e) => break format!("heartbeat failed: {e}"),
                }
            }
        }
    };
    tracing::warn!(pipeline = %pipeline, epoch = epoch.0, reason = %reason, "leadership lost");
    lost.send_replace(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable() {
        // Pinned: a change here would let two versions of pgprism lead at once.
        assert_eq!(lock_key(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(lock_key("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_ne!(lock_key("orders"), lock_key("orders "));
    }
}
