//! The Postgres writer: its sessions (a second one for background flushes), table and
//! fence, and the transaction a flush runs in — the `pgprism dlq` requests, the rows
//! (rejected ones isolated by bisection under savepoints into dead letters), the fenced
//! offset.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pgprism_leader::{Offset, PgFence};
use pgprism_pg::Dsn;
use tokio_postgres::{Client, GenericClient};

use super::writer::{Durability, LaneParts, TargetWriter, Work, connect, connect_writer};
use super::*;
use crate::postgres::PgTable;

/// A Postgres target's session, table and fence.
pub(crate) struct PgWriter {
    pub(crate) dsn: Dsn,
    /// Shared with a background flush ([`InFlight`]); never used while one runs.
    pub(crate) client: Arc<Client>,
    pub(crate) table: Arc<PgTable>,
    pub(crate) fence: PgFence,
    /// Flushes applied in the open replay transaction (0: none open).
    pub(crate) replay_flushes: u32,
    /// A transaction is open on `client` (a flush cancelled mid-way leaves one behind).
    pub(crate) in_tx: bool,
    /// A second session for background flushes, opened on first use: one batch's rows are
    /// copied into its staging table while the previous batch is applied on the other.
    pub(crate) alt: Option<AltSession>,
    /// Sessions background flushes take turns on (`batch.sessions`: 1 or 2).
    pub(crate) sessions: usize,
    /// The server process of `client`: never taken for a frozen predecessor's.
    pub(crate) pid: i32,
    /// How long a session may sit idle in a transaction holding the table's rows before
    /// it is taken for a deposed leader's, frozen (`leader.takeover_after`).
    pub(crate) takeover_after: Duration,
}

/// The second session of a Postgres target (see [`PgWriter::alt`]).
pub(crate) struct AltSession {
    pub(crate) client: Arc<Client>,
    pub(crate) table: Arc<PgTable>,
    pub(crate) in_tx: bool,
    pub(crate) pid: i32,
}

impl PgWriter {
    /// Terminate a deposed leader's session frozen inside a transaction on this table (see
    /// [`pgprism_leader::fence::terminate_frozen_writers`]): when this writer starts, and
    /// after a lock wait timed out. On the main session, unless a transaction (a replay's)
    /// is open on it: then on a session of its own. Failing to (no right to) is logged;
    /// a lock wait then says so, and the retry tries again.
    pub(crate) async fn end_frozen_predecessors(&self, target: &str) {
        let mut ours = vec![self.pid];
        ours.extend(self.alt.as_ref().map(|a| a.pid));
        let result = async {
            let own;
            let client = if self.in_tx {
                own = connect(&self.dsn, target).await?;
                &own
            } else {
                &*self.client
            };
            pgprism_leader::fence::terminate_frozen_writers(
                client,
                self.dsn.session_name(),
                self.table.quoted(),
                &ours,
                self.takeover_after,
            )
            .await
            .map_err(SinkError::from)
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(target_name = %target, error = %e, "could not look for a frozen predecessor's sink session");
        }
    }

    /// Session 0 (the main one) or 1 (the second): client, table, open-transaction flag.
    pub(crate) fn session(&mut self, s: usize) -> Option<(Arc<Client>, Arc<PgTable>, &mut bool)> {
        match s {
            0 => Some((self.client.clone(), self.table.clone(), &mut self.in_tx)),
            _ => self
                .alt
                .as_mut()
                .map(|a| (a.client.clone(), a.table.clone(), &mut a.in_tx)),
        }
    }
}

impl TargetWriter for PgWriter {
    fn check_shape(&self, shape: &Shape) -> Result<(), SinkError> {
        self.table.check_shape(shape)
    }

    async fn contended(&mut self, target: &str) {
        self.end_frozen_predecessors(target).await;
    }

    fn replay_until(&self) -> Option<Offset> {
        self.fence.replay_until()
    }

    fn replays_in_one_transaction(&self) -> bool {
        true
    }

    async fn probe(&mut self) -> bool {
        self.client.batch_execute("SELECT 1").await.is_ok()
    }

    async fn reconnect_if_closed(&mut self, target: &str) {
        if !self.client.is_closed() {
            return;
        }
        match connect_writer(&self.dsn, target).await {
            Ok((c, pid)) => {
                self.client = Arc::new(c);
                self.pid = pid;
                self.in_tx = false;
                self.table.transaction_ended();
            }
            Err(e) => {
                tracing::warn!(target_name = %target, error = %e, "reconnecting to the sink failed")
            }
        }
    }

    async fn rewind(&mut self, target: &str, to: Offset) -> Result<(), SinkError> {
        let client = &*self.client;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(SinkError::pg(target, "beginning the rewind"))?;
        if let Err(e) = self.fence.rewind(client, to).await {
            client.batch_execute("ROLLBACK").await.ok();
            return Err(e.into());
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(SinkError::pg(target, "committing the rewind"))
    }

    async fn apply(
        &mut self,
        lane: LaneParts<'_>,
        work: Work<'_>,
    ) -> Result<(u64, u64, Durability), SinkError> {
        let PgWriter {
            client,
            table,
            fence,
            replay_flushes,
            in_tx,
            ..
        } = self;
        let name = lane.name;
        if *replay_flushes == 0 {
            // A flush cancelled mid-way (another lane failed) left its transaction.
            let begin = if *in_tx { "ROLLBACK; BEGIN" } else { "BEGIN" };
            client
                .batch_execute(begin)
                .await
                .map_err(SinkError::pg(name, "beginning the sink transaction"))?;
            table.transaction_ended();
            *in_tx = true;
        }
        let client: &Client = client;
        let result: Result<(u64, u64), SinkError> = async {
            let (mut written, mut dead) = (0, 0);
            if let Some(shape) = work.shape {
                written += requests_pg(
                    client,
                    lane.dead,
                    lane.logic,
                    lane.source,
                    lane.source_dsn,
                    table,
                    shape,
                    name,
                )
                .await?;
            }
            if let Some(batch) = work.batch {
                let (w, d) = write_pg(client, lane.dead, table, batch).await?;
                written += w;
                dead += d;
                lane.dead
                    .add(
                        client,
                        &batch.shape,
                        &failure_letters(work.recompute_failed),
                    )
                    .await?;
                dead += work.recompute_failed.len() as u64;
            }
            if !work.in_replay {
                if let Some(state) = work.backfill_state {
                    fence.set_backfill(client, Some(state)).await?;
                }
                fence.commit_offset(client, work.to).await?;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(SinkError::pg(name, "committing the sink transaction"))?;
            }
            Ok((written, dead))
        }
        .await;
        match result {
            Ok((written, dead)) if work.in_replay => {
                *replay_flushes += 1;
                Ok((written, dead, Durability::Accepted))
            }
            Ok((written, dead)) => {
                *replay_flushes = 0;
                *in_tx = false;
                table.transaction_ended();
                Ok((written, dead, Durability::Durable))
            }
            Err(e) => {
                if *replay_flushes == 0 {
                    roll_back(client, table, in_tx).await;
                }
                Err(e)
            }
        }
    }

    async fn existing_keys(&mut self, target: &str, shape: &Shape) -> Result<Vec<Key>, SinkError> {
        let cols = shape
            .key_names()
            .map(|n| format!("{}::text", pgprism_pg::quote_ident(n)))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = self
            .client
            .query(&format!("SELECT {cols} FROM {}", self.table.quoted()), &[])
            .await
            .map_err(SinkError::pg(target, "listing the target's keys"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                (0..r.len())
                    .map(|j| r.get::<_, Option<String>>(j).map(bytes::Bytes::from))
                    .collect()
            })
            .collect())
    }
}

/// Write a batch inside the sink transaction: held keys to the dead letters, the
/// truncate, the rows (bad rows isolated to dead letters). Returns (written, dead letters).
pub(super) async fn write_pg(
    tx: &(impl GenericClient + Sync),
    dead: &DeadLetters,
    table: &PgTable,
    batch: &Batch,
) -> Result<(u64, u64), SinkError> {
    let (held, n_held) = hold_and_truncate(tx, dead, table, batch).await?;
    let (go, _) = split_held(batch, &held);
    let (applied, failed) = isolate(tx, table, &batch.shape, &go).await?;
    let letters: Vec<Letter<'_>> = failed
        .iter()
        .map(|((k, e), err)| Letter {
            key: k,
            entry: e,
            status: Status::Failed,
            code: err.code(),
            error: err.detail(),
        })
        .collect();
    dead.add(tx, &batch.shape, &letters).await?;
    Ok((
        applied.upserted + applied.deleted,
        n_held + letters.len() as u64,
    ))
}

/// What precedes a batch's rows in the sink transaction: keys held behind an earlier dead
/// letter are recorded as held, and the target is emptied if the source was truncated.
/// Returns the held keys (as [`key_json`]) and how many entries were held.
pub(super) async fn hold_and_truncate(
    tx: &(impl GenericClient + Sync),
    dead: &DeadLetters,
    table: &PgTable,
    batch: &Batch,
) -> Result<(HashSet<String>, u64), SinkError> {
    let keys: Vec<&Key> = batch.entries.keys().collect();
    let held: HashSet<String> = dead.held(tx, &keys).await?.into_iter().collect();
    let (_, hold) = split_held(batch, &held);
    dead.add(tx, &batch.shape, &held_letters(&hold)).await?;
    if batch.truncate.is_some() {
        table.truncate(tx).await?;
    }
    Ok((held, hold.len() as u64))
}

/// Apply `entries` set-based; when the target rejects a row, bisect under savepoints
/// until the rejected rows are alone, and return them with their errors.
pub(super) async fn isolate<'a>(
    tx: &(impl GenericClient + Sync),
    table: &PgTable,
    shape: &Shape,
    entries: &[(&'a Key, &'a Entry)],
) -> Result<(Applied, Vec<((&'a Key, &'a Entry), SinkError)>), SinkError> {
    let mut total = Applied::default();
    let mut failed = Vec::new();
    if entries.is_empty() {
        return Ok((total, failed));
    }
    let mut work: Vec<&[(&Key, &Entry)]> = vec![entries];
    let sp = |sql: &'static str| async move {
        tx.batch_execute(sql)
            .await
            .map_err(SinkError::pg(&table_name(table), "managing a savepoint"))
    };
    while let Some(slice) = work.pop() {
        sp("SAVEPOINT pgprism_apply").await?;
        match table.apply(tx, shape, slice).await {
            Ok(a) => {
                sp("RELEASE SAVEPOINT pgprism_apply").await?;
                total.upserted += a.upserted;
                total.deleted += a.deleted;
                total.missing += a.missing;
            }
            Err(e) if e.class() == Class::Row => {
                sp("ROLLBACK TO SAVEPOINT pgprism_apply; RELEASE SAVEPOINT pgprism_apply").await?;
                if let [one] = slice {
                    failed.push(((one.0, one.1), e));
                } else {
                    let (a, b) = slice.split_at(slice.len() / 2);
                    work.push(b);
                    work.push(a);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok((total, failed))
}

pub(super) fn table_name(t: &PgTable) -> String {
    t.quoted().to_owned()
}

/// Rebuild the batch of one key's dead letters: its operations in order (mirror), or a
/// recompute of the key (query).
pub(super) async fn retry_batch(
    logic: &mut Logic,
    source: Option<&Client>,
    shape: &Arc<Shape>,
    key: &Key,
    letters: &[Stored],
) -> Result<Retry, SinkError> {
    let last = letters.last().map(|l| Position {
        commit_lsn: l.commit_lsn.parse().unwrap_or_default(),
        seq: l.seq as u64,
    });
    match logic {
        Logic::Mirror(_) => {
            let mut batch = Batch::new(shape.clone());
            for l in letters {
                let Some(op) = op_from_json(shape, &l.change) else {
                    return Ok(Retry::Failed(
                        None,
                        "the change no longer fits the target's columns".to_owned(),
                    ));
                };
                let entry = Entry {
                    op,
                    pos: Position {
                        commit_lsn: l.commit_lsn.parse().unwrap_or_default(),
                        seq: l.seq as u64,
                    },
                    origin: crate::batch::Origin {
                        table: l
                            .change
                            .get("table")
                            .and_then(|t| t.as_str())
                            .unwrap_or("")
                            .into(),
                        op: "retry",
                    },
                };
                batch.push(key.clone(), entry);
            }
            Ok(Retry::Apply(batch))
        }
        Logic::Query(q) => {
            let Some(client) = source else {
                return Err(SinkError::config(q.name(), "no source session for a retry"));
            };
            let keys = KeySet::single(key.clone(), last.unwrap_or_default());
            let (batch, failed) = q.resolve(client, keys, Vec::new()).await?;
            Ok(match failed.into_iter().next() {
                None => Retry::Apply(batch),
                Some((_, _, e)) => Retry::Failed(e.code(), e.detail()),
            })
        }
    }
}

/// Carry out `pgprism dlq retry|discard` requests inside the sink transaction.
#[allow(clippy::too_many_arguments)]
pub(super) async fn requests_pg(
    tx: &(impl GenericClient + Sync),
    dead: &DeadLetters,
    logic: &mut Logic,
    source: &mut Option<Client>,
    source_dsn: &Dsn,
    table: &PgTable,
    shape: &Arc<Shape>,
    name: &str,
) -> Result<u64, SinkError> {
    let mut written = 0;
    for (key_text, letters) in by_key(dead.requested(tx).await?) {
        let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
        if letters
            .iter()
            .any(|l| l.action.as_deref() == Some("discard"))
        {
            dead.remove(tx, &ids).await?;
            continue;
        }
        let Some(key) = key_from_json(&key_text) else {
            dead.retry_failed(tx, &key_text, None, "unreadable key")
                .await?;
            continue;
        };
        if matches!(logic, Logic::Query(_)) && source.as_ref().is_none_or(Client::is_closed) {
            *source = Some(connect(source_dsn, name).await?);
        }
        let batch = match retry_batch(logic, source.as_ref(), shape, &key, &letters).await? {
            Retry::Apply(b) => b,
            Retry::Failed(code, error) => {
                dead.retry_failed(tx, &key_text, code.as_deref(), &error)
                    .await?;
                continue;
            }
        };
        let entries: Vec<(&Key, &Entry)> = batch.entries.iter().collect();
        let (applied, failed) = isolate(tx, table, &batch.shape, &entries).await?;
        match failed.first() {
            None => {
                dead.remove(tx, &ids).await?;
                written += applied.upserted + applied.deleted;
            }
            Some((_, e)) => {
                dead.retry_failed(tx, &key_text, e.code().as_deref(), &e.detail())
                    .await?
            }
        }
    }
    Ok(written)
}

/// Roll back a session's open transaction; once it is gone, so are the rows its staging
/// tables held.
pub(super) async fn roll_back(client: &Client, table: &PgTable, in_tx: &mut bool) {
    if client.batch_execute("ROLLBACK").await.is_ok() {
        *in_tx = false;
        table.transaction_ended();
    }
}
