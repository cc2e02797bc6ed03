//! `pgprism rebuild`: build a read model again beside the live one, then swap.
//!
//! 1. The request ([`request`]) takes a new epoch (the running leader steps down at its
//!    next heartbeat), and per target of the projection:
//!    - Postgres: creates the **shadow** table (`CREATE TABLE … (LIKE live INCLUDING
//!      ALL)`, named `<table>_pgprism_rebuild`) and its offset row (`<target>#rebuild`) at
//!      the live target's offset, with a fresh backfill state naming the live table;
//!    - Redis: restarts the target's backfill in place (every key is written again under
//!      its LSN guard, so nothing moves back in time).
//! 2. The next leader finds the shadow row and runs a **shadow lane**: the projection's
//!    stream changes from that offset plus a backfill of every key, into the shadow table,
//!    while the live table keeps being served and updated.
//! 3. Once the shadow's backfill is done and both are durable at the same offset, one
//!    transaction locks both tables, renames the live one away, renames the shadow to the
//!    live name, drops the old one, marks the live target's backfill done and removes the
//!    shadow row — fenced by the leader's epoch. Readers see the old table or the new
//!    one, never an empty or partial one. Then the leader restarts its lanes.
//!
//! An interrupted rebuild (a kill, a lost leader) resumes from the shadow's committed
//! chunk; one that fails leaves the live table as it was. Objects that refer to the live
//! table by identity (views, foreign keys) would follow it to the dropped table: the drop
//! then fails and the rebuild stops with that error, the live table untouched.

use std::sync::Arc;

use pgprism_leader::{Epoch, PgFence, RedisFence, hold_offsets, supersede};
use pgprism_pg::quote_ident;

use crate::backfill::BackfillState;
use crate::error::SinkError;
use crate::lane::connect;
use crate::postgres::PgTable;
use crate::projector::ProjectorConfig;
use crate::spec::{Sink, parse_table_name};

/// The offset row (and dead letters) of a target's shadow.
pub fn shadow_target(target: &str) -> String {
    format!("{target}#rebuild")
}

/// Postgres' longest identifier, in bytes.
const NAME_MAX: usize = 63;

/// `table` with `suffix`, if the result is still a whole identifier.
fn suffixed(target: &str, table: &str, suffix: &str) -> Result<String, SinkError> {
    let name = format!("{table}{suffix}");
    if name.len() > NAME_MAX {
        return Err(SinkError::config(
            target,
            format!(
                "the rebuild's table name {name:?} is longer than {NAME_MAX} bytes; rename the target table"
            ),
        ));
    }
    Ok(name)
}

/// The shadow table's name beside `table`.
pub fn shadow_table(target: &str, table: &str) -> Result<String, SinkError> {
    suffixed(target, table, "_pgprism_rebuild")
}

/// What a rebuild request set up.
#[derive(Debug, Clone)]
pub struct Requested {
    /// The epoch it was made under (the next leader's is larger).
    pub epoch: Epoch,
    /// Per target: its name, and the shadow table (`None`: a Redis target, rebuilt in
    /// place).
    pub targets: Vec<(String, Option<String>)>,
}

/// Ask the pipeline in `cfg` to rebuild `projection` (see the module documentation).
pub async fn request(cfg: &ProjectorConfig, projection: &str) -> Result<Requested, SinkError> {
    let Some(p) = cfg.projections.iter().find(|p| p.name == projection) else {
        let known: Vec<&str> = cfg.projections.iter().map(|p| p.name.as_str()).collect();
        return Err(SinkError::config(
            "rebuild",
            format!(
                "no projection named {projection:?} (projections: {})",
                known.join(", ")
            ),
        ));
    };
    let source = connect(&cfg.source.named("pgprism source"), "source").await?;
    // Check every target before anything changes: a bad one must not depose the leader.
    let mut plans = Vec::new();
    for t in &p.targets {
        let target = t.name_in(&p.name);
        let sink = cfg
            .sinks
            .get(&t.sink)
            .ok_or_else(|| SinkError::config(&target, format!("no sink named {:?}", t.sink)))?;
        match sink
            .resolve(&t.sink)
            .map_err(|e| SinkError::config(&target, e.to_string()))?
        {
            Sink::Postgres { dsn } => {
                let client =
                    connect(&dsn.named(&format!("pgprism sink {target}")), &target).await?;
                let (schema, table) = t
                    .table
                    .as_deref()
                    .and_then(parse_table_name)
                    .ok_or_else(|| SinkError::config(&target, "the target has no table"))?;
                PgTable::load(&client, &target, &schema, &table).await?;
                let shadow = shadow_table(&target, &table)?;
                suffixed(&target, &table, "_pgprism_old")?;
                if PgFence::read(&client, &cfg.pipeline, &target)
                    .await?
                    .is_none()
                {
                    return Err(SinkError::config(
                        &target,
                        "has never run (no offset yet); start the pipeline: a new target loads the existing rows itself",
                    ));
                }
                plans.push((target, Some((client, schema, table, shadow)), None));
            }
            Sink::Redis { url, ca_file } => {
                let client = crate::redis::open(url, ca_file, &target)?;
                plans.push((target, None, Some(client)));
            }
        }
    }
    // Until this session ends, the request recorded: the leader our new epoch deposes
    // campaigns again at once, and its stamps would fence the request half-way.
    hold_offsets(&source, cfg.lock_key).await?;
    let epoch = supersede(&source, &cfg.pipeline).await?;
    let mut state = BackfillState::start();
    let mut targets = Vec::new();
    for (target, pg, redis) in plans {
        if let Some((client, schema, table, shadow)) = pg {
            state.rebuild_of = Some(format!("{schema}.{table}"));
            let live = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
            let quoted_shadow = format!("{}.{}", quote_ident(&schema), quote_ident(&shadow));
            let ddl = format!(
                "BEGIN;
                 DROP TABLE IF EXISTS {quoted_shadow};
                 CREATE TABLE {quoted_shadow} (LIKE {live} INCLUDING ALL);"
            );
            let result = async {
                client.batch_execute(&ddl).await?;
                client
                    .execute(
                        "INSERT INTO pgprism.offsets
                                (pipeline, sink, resume_lsn, changes_done, epoch, backfill)
                         SELECT pipeline, $3, resume_lsn, changes_done, $4, $5
                           FROM pgprism.offsets WHERE pipeline = $1 AND sink = $2
                         ON CONFLICT (pipeline, sink) DO UPDATE
                            SET resume_lsn = excluded.resume_lsn,
                                changes_done = excluded.changes_done,
                                epoch = excluded.epoch, backfill = excluded.backfill,
                                replay_lsn = NULL, replay_changes = NULL",
                        &[
                            &cfg.pipeline,
                            &target,
                            &shadow_target(&target),
                            &epoch.0,
                            &state.to_json(),
                        ],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            }
            .await;
            if let Err(e) = result {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(SinkError::pg(&target, "creating the shadow table")(e));
            }
            targets.push((target, Some(format!("{schema}.{shadow}"))));
        } else if let Some(client) = redis {
            state.rebuild_of = None;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(SinkError::redis(&target, "connecting to Redis"))?;
            let (fence, offset) =
                RedisFence::stamp(&mut conn, &cfg.pipeline, &target, epoch).await?;
            fence
                .commit_offset_backfill(&mut conn, offset, Some(&state.to_json()))
                .await?;
            targets.push((target, None));
        }
    }
    Ok(Requested { epoch, targets })
}

/// A shadow lane's swap: the live table it replaces and the live target's name.
#[derive(Debug, Clone)]
pub(crate) struct Swap {
    pub(crate) live_target: String,
    pub(crate) schema: String,
    pub(crate) table: String,
}

impl Swap {
    /// In one transaction on the shadow's session (`shadow` is its table): the fenced
    /// offset (unchanged: both are durable there), the renames, the drop, the live
    /// target's backfill marked done, the shadow's row removed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        &self,
        client: &tokio_postgres::Client,
        shadow: &Arc<PgTable>,
        fence: &PgFence,
        at: pgprism_leader::Offset,
        pipeline: &str,
        shadow_name: &str,
        mut done: BackfillState,
    ) -> Result<(), SinkError> {
        let old = suffixed(&self.live_target, &self.table, "_pgprism_old")?;
        let live = format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table));
        done.rebuild_of = None;
        done.window = None;
        let result =
            async {
                client
                    .batch_execute(&format!(
                        "BEGIN; LOCK TABLE {live}, {} IN ACCESS EXCLUSIVE MODE",
                        shadow.quoted()
                    ))
                    .await
                    .map_err(SinkError::pg(
                        &self.live_target,
                        "locking the tables to swap",
                    ))?;
                fence.commit_offset(client, at).await?;
                // Who may read or write the live table may do so with the rebuilt one.
                let grants = client
                    .query(
                        "SELECT grantee::text, privilege_type::text
                       FROM information_schema.role_table_grants
                      WHERE table_schema = $1 AND table_name = $2 AND grantee <> current_user",
                        &[&self.schema, &self.table],
                    )
                    .await
                    .map_err(SinkError::pg(
                        &self.live_target,
                        "reading the live table's grants",
                    ))?;
                for g in grants {
                    let (grantee, privilege): (String, String) = (g.get(0), g.get(1));
                    const KNOWN: [&str; 7] = [
                        "SELECT",
                        "INSERT",
                        "UPDATE",
                        "DELETE",
                        "TRUNCATE",
                        "REFERENCES",
                        "TRIGGER",
                    ];
                    if !KNOWN.contains(&privilege.as_str()) {
                        continue;
                    }
                    let to = if grantee == "PUBLIC" {
                        "PUBLIC".to_owned()
                    } else {
                        quote_ident(&grantee)
                    };
                    client
                        .batch_execute(&format!("GRANT {privilege} ON {} TO {to}", shadow.quoted()))
                        .await
                        .map_err(SinkError::pg(
                            &self.live_target,
                            "copying the live table's grants",
                        ))?;
                }
                client
                    .batch_execute(&format!(
                        "ALTER TABLE {live} RENAME TO {old_q};
                     ALTER TABLE {} RENAME TO {table_q};
                     DROP TABLE {}.{old_q};",
                        shadow.quoted(),
                        quote_ident(&self.schema),
                        old_q = quote_ident(&old),
                        table_q = quote_ident(&self.table),
                    ))
                    .await
                    .map_err(SinkError::pg(
                        &self.live_target,
                        "swapping the rebuilt table in",
                    ))?;
                // The indexes (and their constraints) keep the names they had beside the live
                // table: give them the live table's, now free.
                let prefix = shadow_table(&self.live_target, &self.table)?;
                let indexes = client
                .query(
                    "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                      WHERE i.indrelid = $1::text::regclass AND starts_with(c.relname::text, $2)",
                    &[&live, &prefix],
                )
                .await
                .map_err(SinkError::pg(&self.live_target, "listing the rebuilt table's indexes"))?;
                for row in indexes {
                    let name: String = row.get(0);
                    let renamed = format!("{}{}", self.table, &name[prefix.len()..]);
                    if renamed.len() <= NAME_MAX {
                        client
                            .batch_execute(&format!(
                                "ALTER INDEX {}.{} RENAME TO {}",
                                quote_ident(&self.schema),
                                quote_ident(&name),
                                quote_ident(&renamed)
                            ))
                            .await
                            .map_err(SinkError::pg(
                                &self.live_target,
                                "renaming the rebuilt table's indexes",
                            ))?;
                    }
                }
                client
                .execute(
                    "UPDATE pgprism.offsets SET backfill = $3 WHERE pipeline = $1 AND sink = $2",
                    &[&pipeline, &self.live_target, &done.to_json()],
                )
                .await
                .map_err(SinkError::pg(&self.live_target, "recording the rebuild"))?;
                client
                    .execute(
                        "DELETE FROM pgprism.offsets WHERE pipeline = $1 AND sink = $2",
                        &[&pipeline, &shadow_name],
                    )
                    .await
                    .map_err(SinkError::pg(&self.live_target, "recording the rebuild"))?;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(SinkError::pg(&self.live_target, "committing the swap"))
            }
            .await;
        if result.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        shadow.transaction_ended();
        result
    }
}
