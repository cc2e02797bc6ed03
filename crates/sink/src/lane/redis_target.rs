//! The Redis writer behind the seam: held keys and dead letters (kept in the source
//! database), guarded writes, then the offset.

use std::collections::HashSet;

use tokio_postgres::Client;

use super::writer::{Durability, LaneParts, TargetWriter, Work};
use super::*;
use crate::redis::RedisWriter;

impl TargetWriter for RedisWriter {
    /// A hash or document takes any columns.
    fn check_shape(&self, _shape: &Shape) -> Result<(), SinkError> {
        Ok(())
    }

    /// Redis has no locks a frozen leader could hold.
    async fn contended(&mut self, _target: &str) {}

    fn replay_until(&self) -> Option<Offset> {
        None
    }

    fn replays_in_one_transaction(&self) -> bool {
        false
    }

    async fn probe(&mut self) -> bool {
        self.reconnect().await.is_ok() && self.ping().await.is_ok()
    }

    async fn reconnect_if_closed(&mut self, target: &str) {
        if let Err(e) = self.reconnect().await {
            tracing::warn!(target_name = %target, error = %e, "reconnecting to Redis failed");
        }
    }

    async fn rewind(&mut self, _target: &str, to: Offset) -> Result<(), SinkError> {
        RedisWriter::rewind(self, to).await
    }

    async fn existing_keys(&mut self, _target: &str, shape: &Shape) -> Result<Vec<Key>, SinkError> {
        RedisWriter::existing_keys(self, shape).await
    }

    async fn apply(
        &mut self,
        lane: LaneParts<'_>,
        work: Work<'_>,
    ) -> Result<(u64, u64, Durability), SinkError> {
        // Dead letters of a Redis target live in the source database.
        let source = match lane.source {
            Some(s) if !s.is_closed() => s,
            _ => lane
                .source
                .insert(super::connect(lane.source_dsn, lane.name).await?),
        };
        let (mut written, mut dead) = (0, 0);
        if let Some(shape) = work.shape {
            written += requests_redis(source, lane.dead, lane.logic, self, shape).await?;
        }
        if let Some(batch) = work.batch {
            let keys: Vec<&Key> = batch.entries.keys().collect();
            let held: HashSet<String> = lane.dead.held(source, &keys).await?.into_iter().collect();
            let (go, hold) = split_held(batch, &held);
            lane.dead
                .add(source, &batch.shape, &held_letters(&hold))
                .await?;
            dead += hold.len() as u64;
            let out = self.write(batch, &go).await?;
            written += out.written;
            let failed: Vec<(Key, Entry, String, String)> = out
                .failed
                .into_iter()
                .filter_map(|(k, code, err)| {
                    let e = batch.entries.get(&k)?.clone();
                    Some((k, e, code, err))
                })
                .collect();
            let letters: Vec<Letter<'_>> = failed
                .iter()
                .map(|(k, e, code, err)| Letter {
                    key: k,
                    entry: e,
                    status: Status::Failed,
                    code: Some(code.clone()),
                    error: err.clone(),
                })
                .collect();
            lane.dead.add(source, &batch.shape, &letters).await?;
            dead += letters.len() as u64;
            lane.dead
                .add(
                    source,
                    &batch.shape,
                    &failure_letters(work.recompute_failed),
                )
                .await?;
            dead += work.recompute_failed.len() as u64;
        }
        match work.backfill_state {
            Some(state) => self.commit_backfill(work.to, state).await?,
            None => self.commit(work.to).await?,
        }
        Ok((written, dead, Durability::Durable))
    }
}

/// Carry out `pgprism dlq retry|discard` requests for a Redis target.
pub(super) async fn requests_redis(
    source: &Client,
    dead: &DeadLetters,
    logic: &mut Logic,
    w: &mut RedisWriter,
    shape: &Arc<Shape>,
) -> Result<u64, SinkError> {
    let mut written = 0;
    for (key_text, letters) in by_key(dead.requested(source).await?) {
        let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
        if letters
            .iter()
            .any(|l| l.action.as_deref() == Some("discard"))
        {
            dead.remove(source, &ids).await?;
            continue;
        }
        let Some(key) = key_from_json(&key_text) else {
            dead.retry_failed(source, &key_text, None, "unreadable key")
                .await?;
            continue;
        };
        let batch = match retry_batch(logic, Some(source), shape, &key, &letters).await? {
            Retry::Apply(b) => b,
            Retry::Failed(code, error) => {
                dead.retry_failed(source, &key_text, code.as_deref(), &error)
                    .await?;
                continue;
            }
        };
        let entries: Vec<(&Key, &Entry)> = batch.entries.iter().collect();
        let out = w.write(&batch, &entries).await?;
        match out.failed.first() {
            None => {
                dead.remove(source, &ids).await?;
                written += out.written;
            }
            Some((_, code, err)) => {
                dead.retry_failed(source, &key_text, Some(code), err)
                    .await?
            }
        }
    }
    Ok(written)
}
