//! pgprism's own state tables, created idempotently (and safely when several replicas
//! start at once: concurrent `CREATE … IF NOT EXISTS` can fail on the catalog's unique
//! indexes, so creation is serialized by a transaction-level advisory lock).

use tokio_postgres::Client;

use crate::LeaderError;

/// The advisory lock that serializes pgprism's DDL ("pgprism" in ASCII).
const DDL_LOCK: i64 = 0x0070_6770_7269_736d;

/// On the source: one row per pipeline (epoch, leader, heartbeat) and the lock keys in use.
const SOURCE_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS pgprism;
CREATE TABLE IF NOT EXISTS pgprism.pipelines (
    name         text PRIMARY KEY,
    epoch        bigint NOT NULL,
    leader       text,
    leader_pid   int,
    heartbeat_at timestamptz
);
CREATE TABLE IF NOT EXISTS pgprism.lock_keys (
    key      bigint PRIMARY KEY,
    pipeline text NOT NULL UNIQUE
);";

/// In each Postgres sink: the durable position per (pipeline, sink).
///
/// The position is `(resume_lsn, changes_done)`: with `changes_done = 0`, everything up
/// to `resume_lsn` (the end of the last whole transaction) is durable; otherwise
/// `resume_lsn` is the commit LSN of a transaction applied in chunks, and its first
/// `changes_done` changes are durable. Compared as a pair, positions only grow.
const SINK_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS pgprism;
CREATE TABLE IF NOT EXISTS pgprism.offsets (
    pipeline     text   NOT NULL,
    sink         text   NOT NULL,
    resume_lsn   pg_lsn NOT NULL DEFAULT '0/0',
    changes_done bigint NOT NULL DEFAULT 0 CHECK (changes_done >= 0),
    epoch        bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (pipeline, sink)
);
-- Set by a replay's rewind: the position before it. Until the offset reaches it again the
-- sink applies the replay in one transaction, so readers never see older rows.
ALTER TABLE pgprism.offsets ADD COLUMN IF NOT EXISTS replay_lsn pg_lsn;
ALTER TABLE pgprism.offsets ADD COLUMN IF NOT EXISTS replay_changes bigint;
-- The target's backfill of existing rows (pgprism-sink's state, opaque here): where its
-- scan of the source stands, committed with the rows it covers. NULL: none.
ALTER TABLE pgprism.offsets ADD COLUMN IF NOT EXISTS backfill text;";

/// Run `ddl` unless `present` (a boolean query) says it already ran. DDL takes strong
/// locks even when it changes nothing (`ADD COLUMN IF NOT EXISTS` takes an ACCESS
/// EXCLUSIVE lock), which would queue behind a running leader's transactions and block
/// its next ones: a replica starting up must not do that.
pub async fn ensure(client: &Client, present: &str, ddl: &str) -> Result<(), LeaderError> {
    let done: bool = client
        .query_one(present, &[])
        .await
        .map_err(LeaderError::db("checking pgprism's state tables"))?
        .get(0);
    if done {
        return Ok(());
    }
    let result = client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({DDL_LOCK}); {ddl} COMMIT;"
        ))
        .await;
    if result.is_err() {
        // Leave the session usable: a failed batch leaves its transaction open.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map_err(LeaderError::db("creating pgprism's state tables"))
}

/// Create the source's state tables if missing.
pub(crate) async fn ensure_source(client: &Client) -> Result<(), LeaderError> {
    ensure(
        client,
        "SELECT to_regclass('pgprism.pipelines') IS NOT NULL
            AND to_regclass('pgprism.lock_keys') IS NOT NULL",
        SOURCE_DDL,
    )
    .await
}

/// Create a sink's offsets table if missing.
pub(crate) async fn ensure_sink(client: &Client) -> Result<(), LeaderError> {
    ensure(
        client,
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = to_regclass('pgprism.offsets')
                           AND attname = 'backfill' AND NOT attisdropped)",
        SINK_DDL,
    )
    .await
}
