//! Dead letters: changes a target rejected, and the later changes of the same key held
//! behind them so that per-key order is never broken.
//!
//! `pgprism.dead_letters` lives in the Postgres sink itself for Postgres targets (rows
//! added in the same transaction as the batch and its offset), and in the source database
//! for Redis targets (added before the Redis offset moves; a redelivered batch adds
//! nothing twice thanks to the unique position).
//!
//! Only the leader changes dead letters beyond marking them: `pgprism dlq retry|discard`
//! sets `action`, and the leader carries the action out at its next flush, inside the
//! same transaction as its batch — so a retry can never race the stream for the same key.
//! A retry re-applies every dead letter of the key in order (the failed change, then the
//! held ones); if it fails again the letters stay, with the new error.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use crate::batch::{Entry, Key, Shape, entry_json, key_json};
use crate::error::SinkError;

const DDL: &str = "
CREATE SCHEMA IF NOT EXISTS pgprism;
CREATE TABLE IF NOT EXISTS pgprism.dead_letters (
    id         bigserial PRIMARY KEY,
    pipeline   text   NOT NULL,
    target     text   NOT NULL,
    key        text   NOT NULL,
    commit_lsn pg_lsn NOT NULL,
    seq        bigint NOT NULL,
    change     jsonb  NOT NULL,
    status     text   NOT NULL CHECK (status IN ('failed', 'held')),
    sqlstate   text,
    error      text   NOT NULL,
    action     text   CHECK (action IN ('retry', 'discard')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (pipeline, target, key, commit_lsn, seq)
);
CREATE INDEX IF NOT EXISTS dead_letters_key ON pgprism.dead_letters (pipeline, target, key);";

/// Create `pgprism.dead_letters` if missing (skipped when present: see
/// [`pgprism_leader::schema::ensure`]).
pub async fn ensure(client: &tokio_postgres::Client) -> Result<(), SinkError> {
    Ok(pgprism_leader::schema::ensure(
        client,
        "SELECT to_regclass('pgprism.dead_letters_key') IS NOT NULL",
        DDL,
    )
    .await?)
}

/// Why a change is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The target rejected it.
    Failed,
    /// An earlier change of its key is a dead letter.
    Held,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Failed => "failed",
            Status::Held => "held",
        }
    }
}

/// One new dead letter.
#[derive(Debug)]
pub struct Letter<'a> {
    /// The key.
    pub key: &'a Key,
    /// The operation (its position, change and origin).
    pub entry: &'a Entry,
    /// Failed or held.
    pub status: Status,
    /// SQLSTATE or Redis error code.
    pub code: Option<String>,
    /// The error, or for a held change, which letter holds it.
    pub error: String,
}

/// A stored dead letter.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its id.
    pub id: i64,
    /// The target.
    pub target: String,
    /// The key, as JSON text.
    pub key: String,
    /// Commit LSN of the change, as text.
    pub commit_lsn: String,
    /// Its index in the transaction.
    pub seq: i64,
    /// The change, as stored.
    pub change: serde_json::Value,
    /// `failed` or `held`.
    pub status: String,
    /// SQLSTATE or Redis code.
    pub sqlstate: Option<String>,
    /// The error.
    pub error: String,
    /// A requested action, not yet carried out.
    pub action: Option<String>,
}

fn stored(r: &tokio_postgres::Row) -> Stored {
    Stored {
        id: r.get("id"),
        target: r.get("target"),
        key: r.get("key"),
        commit_lsn: r.get("commit_lsn"),
        seq: r.get("seq"),
        change: r.get("change"),
        status: r.get("status"),
        sqlstate: r.get("sqlstate"),
        error: r.get("error"),
        action: r.get("action"),
    }
}

const COLUMNS: &str =
    "id, target, key, commit_lsn::text AS commit_lsn, seq, change, status, sqlstate, error, action";

/// One target's dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    pipeline: String,
    target: String,
}

impl DeadLetters {
    /// The dead letters of (pipeline, target).
    pub fn new(pipeline: &str, target: &str) -> DeadLetters {
        DeadLetters {
            pipeline: pipeline.to_owned(),
            target: target.to_owned(),
        }
    }

    /// Which of `keys` have dead letters (their changes must wait behind them).
    pub async fn held(
        &self,
        c: &impl GenericClient,
        keys: &[&Key],
    ) -> Result<Vec<String>, SinkError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Usually there are none: one index probe instead of shipping every key of the
        // batch to the server.
        let any: bool = c
            .query_typed_one(
                "SELECT EXISTS (SELECT 1 FROM pgprism.dead_letters WHERE pipeline = $1 AND target = $2)",
                &[(&self.pipeline, Type::TEXT), (&self.target, Type::TEXT)],
            )
            .await
            .map_err(SinkError::pg(&self.target, "looking up held keys"))?
            .get(0);
        if !any {
            return Ok(Vec::new());
        }
        let texts: Vec<String> = keys.iter().map(|k| key_json(k)).collect();
        let rows = c
            .query(
                "SELECT DISTINCT key FROM pgprism.dead_letters
                  WHERE pipeline = $1 AND target = $2 AND key = ANY($3)",
                &[&self.pipeline, &self.target, &texts],
            )
            .await
            .map_err(SinkError::pg(&self.target, "looking up held keys"))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Store letters (a letter already stored, by position, is not stored twice).
    pub async fn add(
        &self,
        c: &impl GenericClient,
        shape: &Shape,
        letters: &[Letter<'_>],
    ) -> Result<(), SinkError> {
        if letters.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = letters.iter().map(|l| key_json(l.key)).collect();
        let lsns: Vec<String> = letters
            .iter()
            .map(|l| l.entry.pos.commit_lsn.to_string())
            .collect();
        let seqs: Vec<i64> = letters
            .iter()
            .map(|l| i64::try_from(l.entry.pos.seq).unwrap_or(i64::MAX))
            .collect();
        let changes: Vec<serde_json::Value> =
            letters.iter().map(|l| entry_json(shape, l.entry)).collect();
        let statuses: Vec<&str> = letters.iter().map(|l| l.status.as_str()).collect();
        let codes: Vec<Option<&str>> = letters.iter().map(|l| l.code.as_deref()).collect();
        let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
        c.execute(
            "INSERT INTO pgprism.dead_letters
                    (pipeline, target, key, commit_lsn, seq, change, status, sqlstate, error)
             SELECT $1, $2, u.key, u.lsn::pg_lsn, u.seq, u.change, u.status, u.code, u.error
               FROM unnest($3::text[], $4::text[], $5::int8[], $6::jsonb[], $7::text[],
                           $8::text[], $9::text[])
                    AS u(key, lsn, seq, change, status, code, error)
             ON CONFLICT (pipeline, target, key, commit_lsn, seq) DO NOTHING",
            &[
                &self.pipeline,
                &self.target,
                &keys,
                &lsns,
                &seqs,
                &changes,
                &statuses,
                &codes,
                &errors,
            ],
        )
        .await
        .map_err(SinkError::pg(&self.target, "storing dead letters"))?;
        for l in letters.iter().filter(|l| l.status == Status::Failed) {
            tracing::warn!(
                target_name = %self.target,
                key = %key_json(l.key),
                lsn = %l.entry.pos.commit_lsn,
                code = l.code.as_deref().unwrap_or(""),
                error = %l.error,
                "change rejected by the target; stored as a dead letter, its key is held"
            );
        }
        Ok(())
    }

    /// Every letter of every key with a requested action, in order (by key, then id).
    pub async fn requested(&self, c: &impl GenericClient) -> Result<Vec<Stored>, SinkError> {
        // Typed parameters: one round trip, every flush.
        let rows = c
            .query_typed(
                &format!(
                    "SELECT {COLUMNS} FROM pgprism.dead_letters d
                      WHERE pipeline = $1 AND target = $2
                        AND key IN (SELECT key FROM pgprism.dead_letters
                                     WHERE pipeline = $1 AND target = $2 AND action IS NOT NULL)
                      ORDER BY key, id"
                ),
                &[(&self.pipeline, Type::TEXT), (&self.target, Type::TEXT)],
            )
            .await
            .map_err(SinkError::pg(
                &self.target,
                "reading requested dead-letter actions",
            ))?;
        Ok(rows.iter().map(stored).collect())
    }

    /// Remove letters (applied by a retry, or discarded).
    pub async fn remove(&self, c: &impl GenericClient, ids: &[i64]) -> Result<(), SinkError> {
        if ids.is_empty() {
            return Ok(());
        }
        c.execute(
            "DELETE FROM pgprism.dead_letters WHERE pipeline = $1 AND target = $2 AND id = ANY($3)",
            &[&self.pipeline, &self.target, &ids],
        )
        .await
        .map_err(SinkError::pg(&self.target, "removing dead letters"))?;
        Ok(())
    }

    /// A retry failed again: keep the key's letters, clear the request, record the error.
    pub async fn retry_failed(
        &self,
        c: &impl GenericClient,
        key: &str,
        code: Option<&str>,
        error: &str,
    ) -> Result<(), SinkError> {
        c.execute(
            "UPDATE pgprism.dead_letters
                SET action = NULL,
                    sqlstate = CASE WHEN status = 'failed' THEN $4 ELSE sqlstate END,
                    error = CASE WHEN status = 'failed' THEN $5 ELSE error END
              WHERE pipeline = $1 AND target = $2 AND key = $3",
            &[&self.pipeline, &self.target, &key, &code, &error],
        )
        .await
        .map_err(SinkError::pg(&self.target, "recording a failed retry"))?;
        Ok(())
    }
}

/// What `pgprism dlq` selects.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this target.
    pub target: Option<String>,
    /// Only these ids (and, for a retry or discard, the rest of their keys' letters).
    pub ids: Vec<i64>,
}

/// The dead letters of a pipeline, oldest first.
pub async fn list(
    c: &impl GenericClient,
    pipeline: &str,
    sel: &Selection,
) -> Result<Vec<Stored>, SinkError> {
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM pgprism.dead_letters
                  WHERE pipeline = $1 AND ($2::text IS NULL OR target = $2)
                    AND (cardinality($3::int8[]) = 0 OR id = ANY($3))
                  ORDER BY id"
            ),
            &[&pipeline, &sel.target, &sel.ids],
        )
        .await
        .map_err(SinkError::pg("dead letters", "listing dead letters"))?;
    Ok(rows.iter().map(stored).collect())
}

/// Ask the leader to retry or discard the selected letters' keys; how many letters
/// were marked.
pub async fn request(
    c: &impl GenericClient,
    pipeline: &str,
    sel: &Selection,
    action: Action,
) -> Result<u64, SinkError> {
    c.execute(
        "UPDATE pgprism.dead_letters d SET action = $4
          WHERE pipeline = $1 AND ($2::text IS NULL OR target = $2)
            AND (cardinality($3::int8[]) = 0
                 OR (target, key) IN (SELECT target, key FROM pgprism.dead_letters
                                       WHERE pipeline = $1 AND id = ANY($3)))",
        &[&pipeline, &sel.target, &sel.ids, &action.as_str()],
    )
    .await
    .map_err(SinkError::pg("dead letters", "marking dead letters"))
}

/// What to do with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Apply them again, in order.
    Retry,
    /// Drop them (their changes are lost to the target; the key flows again).
    Discard,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Discard => "discard",
        }
    }
}
