//! The projector: routes decoded changes to every lane (projection × target), decides
//! when to flush, flushes lanes concurrently, and reports what the slot may be
//! acknowledged to (the minimum over lanes).
//!
//! Positions: after each chunk the projector knows the offset "everything pushed so far"
//! — the end of the transaction when the chunk closed one, else the commit LSN and the
//! number of its changes pushed. A flush makes that offset durable in every lane. A lane
//! resuming from its own stored offset skips every change its offset covers, so lanes that
//! were ahead of the others re-apply nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use pgprism_decoder::Lsn;
use pgprism_decoder::pgoutput::{Column, Relation, ReplicaIdentity};
use pgprism_decoder::stream::{ChangeKind, TxnChunk};
use pgprism_leader::{Epoch, Offset, PgFence};
use pgprism_pg::Dsn;
use tokio_postgres::Client;

use crate::adaptive::Adaptive;
use crate::batch::Position;
use crate::dead_letter;
use crate::error::SinkError;
use crate::lane::{
    Lane, LaneFlush, Logic, PgWriter, Writer, acknowledgeable, connect, connect_writer,
};
use crate::mirror::Mirror;
use crate::postgres::PgTable;
use crate::query::{Mapping, QueryProjection};
use crate::rebuild::{Swap, shadow_table, shadow_target};
use crate::redis::RedisWriter;
use crate::spec::{
    BackfillSpec, BatchSpec, KeyMapping, ProjectionSpec, Resolved, Sink, SinkKind, SinkSpec,
    TargetSpec, parse_table_name, validate,
};
use pgprism_leader::fence::read_backfill;

/// Everything the projector needs to start.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// The pipeline's name (offsets and dead letters are kept under it).
    pub pipeline: String,
    /// The pipeline's leader lock key (`pgprism_leader::lock_key` of the name unless set).
    pub lock_key: i64,
    /// The leader's epoch: every sink write is fenced with it.
    pub epoch: Epoch,
    /// The source database (catalog lookups, query projections).
    pub source: Dsn,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkSpec>,
    /// The projections.
    pub projections: Vec<ProjectionSpec>,
    /// Batch sizing.
    pub batch: BatchSpec,
    /// How long a stamp waits for a frozen old leader's sink transaction.
    pub takeover_after: Duration,
    /// Loading existing rows into new targets.
    pub backfill: BackfillSpec,
}

/// The state of one target, for status and metrics.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    /// The target's name.
    pub name: String,
    /// Its projection.
    pub projection: String,
    /// Its sink.
    pub sink: String,
    /// Its durable offset.
    pub offset: Offset,
    /// Its backfill: rows loaded and the planner's estimate of those left (`None`: none
    /// running).
    pub backfill: Option<(u64, u64)>,
    /// Changes waiting for the next flush.
    pub pending: usize,
}

/// What one flush did.
#[derive(Debug, Clone, Default)]
pub struct FlushReport {
    /// Changes pushed since the previous flush.
    pub changes: usize,
    /// Rows written over all lanes.
    pub written: u64,
    /// New dead letters over all lanes.
    pub dead_letters: u64,
    /// Per lane (name, written).
    pub lanes: Vec<(String, LaneFlush)>,
    /// How long the flush took.
    pub took: Duration,
    /// The offset flushed to: durable in every lane once no background flush runs
    /// ([`Projector::has_unflushed`] is false).
    pub offset: Offset,
}

/// The commit time of the oldest change pushed but not yet durable, shared with whoever
/// reports the lag (it keeps growing while a flush is stuck).
#[derive(Debug, Default)]
pub struct LagClock {
    /// Microseconds since 2000-01-01; 0 when everything pushed is durable.
    oldest_pending_us: AtomicI64,
    /// The same for changes received but not pushed yet (held while a flush runs); 0 when
    /// there are none.
    oldest_queued_us: AtomicI64,
}

impl LagClock {
    /// How long the oldest change not yet durable has waited since its commit; zero when
    /// everything received is durable.
    pub fn lag(&self) -> Duration {
        let pending = self.oldest_pending_us.load(Ordering::Relaxed);
        let queued = self.oldest_queued_us.load(Ordering::Relaxed);
        match [pending, queued].into_iter().filter(|&t| t != 0).min() {
            None => Duration::ZERO,
            Some(t) => lag_of(t),
        }
    }

    /// The commit time (µs since 2000-01-01) of the oldest change received but not pushed
    /// to the projector yet; `None` when there is none.
    pub fn set_queued(&self, commit_time: Option<i64>) {
        self.oldest_queued_us
            .store(commit_time.map_or(0, |c| c.max(1)), Ordering::Relaxed);
    }
}

/// Routes changes into lanes and flushes them.
#[derive(Debug)]
pub struct Projector {
    /// The pipeline's name.
    pipeline: String,
    /// Shared with the metrics reporter.
    clock: Arc<LagClock>,
    lanes: Vec<Lane>,
    size: Adaptive,
    max_age: Duration,
    target_lag: Duration,
    /// Changes pushed since the last flush.
    changes: usize,
    /// When the first of them was pushed.
    oldest: Option<Instant>,
    /// Commit time (µs since 2000-01-01) of the first transaction pushed since the last flush.
    oldest_commit: Option<i64>,
    /// While lanes flush in the background: when that flush started, and the commit time
    /// of its oldest change (not durable yet, so still lag).
    behind: Option<(Instant, i64)>,
    /// Everything pushed so far.
    next: Offset,
    /// The end of the last whole transaction pushed.
    last_end: Lsn,
    /// Published tables whose changes no projection reads, warned about once each.
    unclaimed: std::collections::HashSet<String>,
}

/// Columns and replica identity of a source table, as a relation message would carry them.
async fn catalog_relation(
    source: &Client,
    projection: &str,
    schema: &str,
    table: &str,
) -> Result<Relation, SinkError> {
    let rows = source
        .query(
            "SELECT c.oid, c.relreplident::text, a.attname::text, a.atttypid, a.atttypmod,
                    coalesce(a.attnum = ANY(
                        CASE c.relreplident
                          WHEN 'd' THEN (SELECT i.indkey::int2[] FROM pg_index i
                                          WHERE i.indrelid = c.oid AND i.indisprimary)
                          WHEN 'i' THEN (SELECT i.indkey::int2[] FROM pg_index i
                                          WHERE i.indrelid = c.oid AND i.indisreplident)
                        END), c.relreplident = 'f') AS is_key,
                    (SELECT array_position(i.indkey::int2[], a.attnum) FROM pg_index i
                      WHERE i.indrelid = c.oid AND i.indisprimary) AS pk_pos
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid
              WHERE n.nspname = $1 AND c.relname = $2
                AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(SinkError::pg(
            projection,
            "reading the source table's columns",
        ))?;
    let Some(first) = rows.first() else {
        return Err(SinkError::config(
            projection,
            format!("the source has no table {schema}.{table}"),
        ));
    };
    let ident: String = first.get(1);
    Ok(Relation {
        xid: None,
        id: first.get(0),
        namespace: schema.to_owned(),
        name: table.to_owned(),
        replica_identity: match ident.as_str() {
            "f" => ReplicaIdentity::Full,
            "n" => ReplicaIdentity::Nothing,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        },
        columns: rows
            .iter()
            .map(|r| Column {
                is_key: r.get(5),
                name: r.get(2),
                type_oid: r.get(3),
                type_modifier: r.get(4),
            })
            .collect(),
    })
}

/// The primary-key columns of a source table, in key order.
async fn primary_key(
    source: &Client,
    projection: &str,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, SinkError> {
    let rows = source
        .query(
            "SELECT a.attname::text
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
              WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary
              ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&schema, &table],
        )
        .await
        .map_err(SinkError::pg(
            projection,
            "reading the source table's primary key",
        ))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Check every projection and target as [`Projector::start`] would, without writing
/// anything or taking part: source tables, keys, replica identity, queries, sink
/// connectivity, target tables and columns, the right to create pgprism's state tables.
/// Every problem found, each with its fix.
pub async fn check(cfg: &ProjectorConfig) -> Vec<SinkError> {
    let mut problems = Vec::new();
    if let Err(e) = validate(&cfg.sinks, &cfg.projections, &cfg.batch) {
        problems.push(SinkError::config("config", e.to_string()));
        return problems;
    }
    let source = match connect(&cfg.source.named("pgprism source"), "source").await {
        Ok(s) => s,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    let mut sinks_ok: BTreeMap<String, bool> = BTreeMap::new();
    for (i, p) in cfg.projections.iter().enumerate() {
        let resolved = match p.resolve(&format!("projections[{i}]")) {
            Ok(r) => r,
            Err(e) => {
                problems.push(SinkError::config("config", e.to_string()));
                continue;
            }
        };
        let shape = match plan(&source, &resolved).await {
            Ok((_, shape)) => shape,
            Err(e) => {
                problems.push(e);
                None
            }
        };
        for t in &p.targets {
            let target = t.name_in(&p.name);
            let Some(sink) = cfg.sinks.get(&t.sink) else {
                continue;
            };
            let sink = match sink.resolve(&t.sink) {
                Ok(sink) => sink,
                Err(e) => {
                    problems.push(SinkError::config("config", e.to_string()));
                    continue;
                }
            };
            match sink {
                Sink::Postgres { dsn } => {
                    let result = async {
                        let client = connect(&dsn.named(&format!("pgprism sink {target}")), &target).await?;
                        if sinks_ok.insert(t.sink.clone(), true).is_none() {
                            let can: bool = client
                                .query_one(
                                    "SELECT CASE WHEN to_regnamespace('pgprism') IS NULL
                                                 THEN has_database_privilege(current_database(), 'CREATE')
                                                 ELSE has_schema_privilege('pgprism', 'CREATE, USAGE') END",
                                    &[],
                                )
                                .await
                                .map_err(SinkError::pg(&target, "checking privileges"))?
                                .get(0);
                            if !can {
                                return Err(SinkError::config(
                                    &target,
                                    format!(
                                        "user {:?} cannot create pgprism's state tables in sink {:?}; fix: GRANT CREATE ON DATABASE {} TO {} (or create schema pgprism for it)",
                                        dsn.user(),
                                        t.sink,
                                        pgprism_pg::quote_ident(dsn.dbname()),
                                        pgprism_pg::quote_ident(dsn.user())
                                    ),
                                ));
                            }
                        }
                        let (schema, table) = table_of(&target, t.table.as_deref().unwrap_or(""))?;
                        let table = PgTable::load(&client, &target, &schema, &table).await?;
                        if let Some(shape) = &shape {
                            table.check_shape(shape)?;
                        }
                        Ok(())
                    }
                    .await;
                    if let Err(e) = result {
                        problems.push(e);
                    }
                }
                Sink::Redis { url, ca_file } => {
                    if sinks_ok.insert(t.sink.clone(), true).is_some() {
                        continue;
                    }
                    let result = async {
                        let client = crate::redis::open(url, ca_file, &target)?;
                        let mut conn = tokio::time::timeout(
                            Duration::from_secs(5),
                            client.get_multiplexed_async_connection(),
                        )
                        .await
                        .map_err(|_| {
                            SinkError::config(
                                &target,
                                format!(
                                    "Redis at {} did not answer within 5 s",
                                    crate::spec::redact_url(url)
                                ),
                            )
                        })?
                        .map_err(SinkError::redis(&target, "connecting to Redis"))?;
                        let _: String = redis::cmd("PING")
                            .query_async(&mut conn)
                            .await
                            .map_err(SinkError::redis(&target, "PING"))?;
                        Ok::<(), SinkError>(())
                    }
                    .await;
                    if let Err(e) = result {
                        problems.push(e);
                    }
                }
            }
        }
    }
    problems
}

/// The change mapping of a projection and its row shape, checked against the source's
/// catalog (tables, keys, replica identity, the query).
async fn plan(
    source: &Client,
    p: &Resolved,
) -> Result<(Logic, Option<Arc<crate::batch::Shape>>), SinkError> {
    let name = p.name();
    Ok(match p {
        Resolved::Mirror(m) => {
            let (schema, table) = table_of(name, &m.source)?;
            let rel = catalog_relation(source, name, &schema, &table).await?;
            let key = match &m.key {
                Some(k) => k.clone(),
                None => {
                    let pk = primary_key(source, name, &schema, &table).await?;
                    if pk.is_empty() {
                        return Err(SinkError::config(
                            name,
                            format!(
                                "{schema}.{table} has no primary key; set `key` to the columns that identify a row"
                            ),
                        ));
                    }
                    pk
                }
            };
            let mut mirror = Mirror::new(m, schema, table, key);
            let shape = mirror.shape(&Arc::new(rel))?;
            (Logic::Mirror(mirror), Some(shape))
        }
        Resolved::Query(q) => {
            let mut mappings = Vec::new();
            for (table_name, ks) in &q.keys {
                let (schema, table) = table_of(name, table_name)?;
                let mapping = match ks {
                    KeyMapping::FanOut { query, column } => {
                        let column = match column {
                            Some(c) => c.clone(),
                            None => {
                                let pk = primary_key(source, name, &schema, &table).await?;
                                match pk.as_slice() {
                                    [one] => one.clone(),
                                    _ => {
                                        return Err(SinkError::config(
                                            name,
                                            format!(
                                                "keys.\"{table_name}\": the table has no single-column primary key; set `column` to the column passed as $1"
                                            ),
                                        ));
                                    }
                                }
                            }
                        };
                        Mapping::FanOut {
                            column,
                            query: query.clone(),
                        }
                    }
                    KeyMapping::Columns(cs) => Mapping::Columns(cs.clone()),
                };
                mappings.push((schema, table, mapping));
            }
            let mut query = QueryProjection::new(q, mappings.clone());
            for (schema, table, _) in &mappings {
                let rel = catalog_relation(source, name, schema, table).await?;
                query.check_relation(&Arc::new(rel))?;
            }
            let shape = query.prepare(source).await?;
            (Logic::Query(query), Some(shape))
        }
    })
}

/// A Postgres target to open a writer for.
struct PgTarget<'a> {
    target: &'a str,
    dsn: &'a Dsn,
    schema: &'a str,
    table: &'a str,
}

/// Connect a Postgres target's session, check its table, stamp our epoch on its offset
/// (creating it with `initial` as its backfill state), and return where it resumes.
async fn pg_writer(
    cfg: &ProjectorConfig,
    t: PgTarget<'_>,
    timeouts: &str,
    shape: Option<&Arc<crate::batch::Shape>>,
    initial: Option<&str>,
) -> Result<(PgWriter, Offset), SinkError> {
    let target = t.target;
    let dsn = t
        .dsn
        .named(&format!("pgprism sink {target}"))
        .with_options(timeouts);
    let (client, pid) = connect_writer(&dsn, target).await?;
    dead_letter::ensure(&client).await?;
    let table = PgTable::load(&client, target, t.schema, t.table).await?;
    if let Some(shape) = shape {
        table.check_shape(shape)?;
    }
    let (fence, stored) = PgFence::stamp_new(
        &client,
        &cfg.pipeline,
        target,
        cfg.epoch,
        cfg.takeover_after,
        initial,
    )
    .await?;
    let writer = PgWriter {
        dsn,
        client: Arc::new(client),
        table: Arc::new(table),
        fence,
        replay_flushes: 0,
        in_tx: false,
        alt: None,
        sessions: cfg.batch.sessions,
        pid,
        takeover_after: cfg.takeover_after,
    };
    // Our epoch owns the target now: a predecessor's session still inside a transaction
    // on its table, idle that long, is frozen — its locks would hold our first writes
    // until it wakes.
    writer.end_frozen_predecessors(target).await;
    Ok((writer, stored))
}

/// A target's backfill from its stored state: the tables to scan and their size.
async fn plan_backfill(
    source: &Client,
    target: &str,
    logic: &Logic,
    state: crate::backfill::BackfillState,
    spec: &BackfillSpec,
) -> Result<Option<crate::backfill::Backfill>, SinkError> {
    use crate::backfill::{Backfill, estimate};
    if !state.running() && state.window.is_none() {
        return Ok(None);
    }
    let scans = match logic {
        // Read again from the relation at each chunk (it may change shape meanwhile).
        Logic::Mirror(m) => m.backfill_scan().map(|(s, _)| s).into_iter().collect(),
        Logic::Query(q) => {
            let mut pks = BTreeMap::new();
            for (schema, table) in q.source_tables() {
                let pk = primary_key(source, target, &schema, &table).await?;
                pks.insert((schema, table), pk);
            }
            q.backfill_scans(|schema, table| {
                pks.get(&(schema.to_owned(), table.to_owned()))
                    .cloned()
                    .unwrap_or_default()
            })
        }
    };
    let n = estimate(source, &scans).await;
    Ok(Some(Backfill::new(scans, state, spec, n)))
}

fn table_of(projection: &str, name: &str) -> Result<(String, String), SinkError> {
    parse_table_name(name)
        .ok_or_else(|| SinkError::config(projection, format!("{name:?} is not a table name")))
}

/// What the start of every target shares.
struct TargetStart<'a> {
    cfg: &'a ProjectorConfig,
    source: &'a Client,
    source_dsn: &'a Dsn,
    timeouts: &'a str,
    /// The backfill state of a target new to the pipeline.
    initial: Option<&'a str>,
}

impl TargetStart<'_> {
    /// Connect target `t` of projection `p`, stamp our epoch on its offset, read where it
    /// resumes and plan its backfill; beside it, its rebuild's shadow lane when a rebuild
    /// was asked for.
    async fn target(
        &self,
        p: &Resolved,
        t: &TargetSpec,
    ) -> Result<(Lane, Option<Lane>), SinkError> {
        let name = p.name();
        let (cfg, source, source_dsn, timeouts, initial) = (
            self.cfg,
            self.source,
            self.source_dsn,
            self.timeouts,
            self.initial,
        );
        let mut shadow_lane = None;
        let target_started = std::time::Instant::now();
        let target = t.name_in(name);
        let (logic, shape) = plan(source, p).await?;
        let sink = cfg
            .sinks
            .get(&t.sink)
            .ok_or_else(|| SinkError::config(&target, format!("no sink named {:?}", t.sink)))?
            .resolve(&t.sink)
            .map_err(|e| SinkError::config("config", e.to_string()))?;
        let (writer, stored) = match sink {
            Sink::Postgres { dsn } => {
                let (schema, table) = table_of(&target, t.table.as_deref().unwrap_or(""))?;
                let (w, stored) = pg_writer(
                    cfg,
                    PgTarget {
                        target: &target,
                        dsn,
                        schema: &schema,
                        table: &table,
                    },
                    timeouts,
                    shape.as_ref(),
                    initial,
                )
                .await?;
                let shadow = shadow_target(&target);
                if let Some(text) = read_backfill(&*w.client, &cfg.pipeline, &shadow).await? {
                    // A rebuild was asked for: its shadow lane goes beside this one.
                    let state = crate::backfill::BackfillState::parse(&shadow, &text)?;
                    let shadow_table = shadow_table(&target, &table)?;
                    let (sw, shadow_stored) = pg_writer(
                        cfg,
                        PgTarget {
                            target: &shadow,
                            dsn,
                            schema: &schema,
                            table: &shadow_table,
                        },
                        timeouts,
                        shape.as_ref(),
                        None,
                    )
                    .await?;
                    let (logic, shape) = plan(source, p).await?;
                    let backfill =
                        plan_backfill(source, &shadow, &logic, state, &cfg.backfill).await?;
                    tracing::info!(target_name = %shadow, offset = %shadow_stored.resume_lsn, table = %format!("{schema}.{shadow_table}"),
                        "rebuilding beside the live table");
                    let lane_source = source_dsn.named(&format!("pgprism query {shadow}"));
                    let mut lane = Lane::new(
                        shadow,
                        name.to_owned(),
                        t.sink.clone(),
                        &cfg.pipeline,
                        logic,
                        Writer::Postgres(Box::new(sw)),
                        lane_source,
                        shape,
                        shadow_stored,
                        cfg.batch.detach_after,
                        backfill,
                    );
                    lane.swap = Some(Swap {
                        live_target: target.clone(),
                        schema: schema.clone(),
                        table: table.clone(),
                    });
                    shadow_lane = Some(lane);
                }
                (Writer::Postgres(Box::new(w)), stored)
            }
            Sink::Redis { url, ca_file } => {
                let (w, stored) = RedisWriter::connect(
                    &cfg.pipeline,
                    &target,
                    crate::redis::open(url, ca_file, &target)?,
                    t,
                    cfg.epoch,
                    initial,
                )
                .await?;
                (Writer::Redis(Box::new(w)), stored)
            }
        };
        let state = match &writer {
            Writer::Postgres(w) => w.fence.backfill().map(str::to_owned),
            Writer::Redis(w) => w.backfill().map(str::to_owned),
        };
        let backfill = match state {
            Some(text) => {
                let state = crate::backfill::BackfillState::parse(&target, &text)?;
                plan_backfill(source, &target, &logic, state, &cfg.backfill).await?
            }
            None => None,
        };
        tracing::info!(target_name = %target, offset = %stored.resume_lsn, changes_done = stored.changes_done, epoch = %cfg.epoch,
            backfill = backfill.as_ref().map(|b| if b.state.running() { "running" } else { "done" }).unwrap_or("none"),
            backfill_rows = backfill.as_ref().map_or(0, |b| b.state.rows),
            took_ms = target_started.elapsed().as_millis() as u64,
            "target ready");
        let lane_source = source_dsn.named(&format!("pgprism query {target}"));
        let lane = Lane::new(
            target,
            name.to_owned(),
            t.sink.clone(),
            &cfg.pipeline,
            logic,
            writer,
            lane_source,
            shape,
            stored,
            cfg.batch.detach_after,
            backfill,
        );
        Ok((lane, shadow_lane))
    }
}

impl Projector {
    /// Validate the configuration, connect every target, stamp our epoch on each target's
    /// offset, and read where each resumes.
    pub async fn start(cfg: &ProjectorConfig) -> Result<Projector, SinkError> {
        validate(&cfg.sinks, &cfg.projections, &cfg.batch)
            .map_err(|e| SinkError::config("config", e.to_string()))?;
        let timeouts = format!(
            "-c lock_timeout={} -c statement_timeout={}",
            cfg.batch.lock_timeout.as_millis(),
            cfg.batch.statement_timeout.as_millis()
        );
        let source_dsn = cfg.source.with_options(&timeouts);
        let source = connect(&source_dsn.named("pgprism source"), "source").await?;
        let resolved = cfg
            .projections
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.resolve(&format!("projections[{i}]"))
                    .map_err(|e| SinkError::config("config", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let initial = cfg
            .backfill
            .initial
            .then(|| crate::backfill::BackfillState::start().to_json());
        // A Redis target's dead letters live in the source: their table, once.
        let redis = |t: &TargetSpec| {
            cfg.sinks
                .get(&t.sink)
                .is_some_and(|s| s.kind == SinkKind::Redis)
        };
        if resolved.iter().any(|p| p.targets().iter().any(redis)) {
            dead_letter::ensure(&source).await?;
        }
        let start = TargetStart {
            cfg,
            source: &source,
            source_dsn: &source_dsn,
            timeouts: &timeouts,
            initial: initial.as_deref(),
        };
        // Every target at once: each waits on its own connects and round trips (a new
        // leader's start is most of a takeover, and a loaded server makes each trip slow).
        let started = futures_util::future::try_join_all(
            resolved
                .iter()
                .flat_map(|p| p.targets().iter().map(|t| start.target(p, t))),
        )
        .await?;
        let (mut lanes, mut shadows) = (Vec::new(), Vec::new());
        for (lane, shadow) in started {
            lanes.push(lane);
            shadows.extend(shadow);
        }
        lanes.extend(shadows);
        for lane in &lanes {
            // Present from the start, so an alert on its rate works before the first one.
            metrics::counter!("pgprism_dead_letters_total", "projection" => lane.projection.clone())
                .increment(0);
        }
        let next = lanes.iter().map(|l| l.covered).min().unwrap_or_default();
        Ok(Projector {
            pipeline: cfg.pipeline.clone(),
            clock: Arc::new(LagClock::default()),
            size: Adaptive::new(&cfg.batch),
            max_age: cfg.batch.max_age,
            target_lag: cfg.batch.target_lag,
            changes: 0,
            oldest: None,
            oldest_commit: None,
            behind: None,
            last_end: acknowledgeable(next),
            next,
            lanes,
            unclaimed: Default::default(),
        })
    }

    /// The lag clock, for a reporter that keeps the lag current while a flush is stuck.
    pub fn lag_clock(&self) -> Arc<LagClock> {
        self.clock.clone()
    }

    /// Where the stream must start: the smallest offset over all targets.
    pub fn resume_lsn(&self) -> Lsn {
        self.lanes
            .iter()
            .map(|l| l.stored.resume_lsn)
            .min()
            .unwrap_or_default()
    }

    /// Fold a chunk of a transaction in; flush when the batch is full.
    pub async fn push(&mut self, chunk: &TxnChunk) -> Result<Option<FlushReport>, SinkError> {
        self.route(chunk).await?;
        if self.pending() >= self.size.size() {
            // The next changes are routed while this batch is written.
            return self.flush_group(true).await.map(Some);
        }
        Ok(None)
    }

    /// Fold a chunk of a transaction in without flushing for size (a caller that bounds
    /// what it routes between flushes itself, like `drive`'s inbox). A lane whose source
    /// table changed shape still flushes what it holds first.
    pub async fn route(&mut self, chunk: &TxnChunk) -> Result<(), SinkError> {
        let commit_lsn = chunk.txn.commit_lsn;
        // Counted per relation and named once per chunk, not once per change: all changes,
        // and those of a published table that no projection reads.
        let mut counts: Vec<(Option<&Arc<Relation>>, &'static str, u64, u64)> = Vec::new();
        for (i, change) in chunk.changes.iter().enumerate() {
            let (rel, op) = table_op(&change.kind);
            let pos = Position {
                commit_lsn,
                seq: chunk.first_seq + i as u64,
            };
            let mut claimed = false;
            for lane in &mut self.lanes {
                let concerns = lane.concerns(&change.kind);
                claimed |= concerns;
                if lane.detached.is_some() || lane.covers(pos) || !concerns {
                    continue;
                }
                if lane.shape_change(&change.kind)? {
                    // The source table changed shape: write what came before first.
                    let before = Offset::inside_transaction(commit_lsn, pos.seq);
                    lane.flush(before, self.last_end).await?;
                    lane.shape_change(&change.kind)?;
                }
                lane.push(&change.kind, pos, chunk.txn.xid)?;
            }
            let unclaimed = u64::from(!claimed && rel.is_some());
            match counts
                .iter_mut()
                .find(|(r, o, ..)| *o == op && r.map(Arc::as_ptr) == rel.map(Arc::as_ptr))
            {
                Some((_, _, n, u)) => {
                    *n += 1;
                    *u += unclaimed;
                }
                None => counts.push((rel, op, 1, unclaimed)),
            }
        }
        for (rel, op, n, unclaimed) in counts {
            let table = rel.map(|r| r.qualified_name()).unwrap_or_default();
            metrics::counter!("pgprism_changes_total", "table" => table.clone(), "op" => op)
                .increment(n);
            if unclaimed == 0 {
                continue;
            }
            metrics::counter!("pgprism_unclaimed_changes_total", "table" => table.clone())
                .increment(unclaimed);
            if self.unclaimed.insert(table.clone()) {
                tracing::warn!(table = %table,
                    "changes of a published table that no projection reads: counted in pgprism_unclaimed_changes_total; \
                     fix: if it is a partition of a table a projection reads, ALTER PUBLICATION … SET (publish_via_partition_root = true); \
                     otherwise drop it from the publication or add a projection");
            }
        }
        self.changes += chunk.changes.len();
        self.oldest.get_or_insert_with(Instant::now);
        if self.oldest_commit.is_none() {
            self.oldest_commit = Some(chunk.txn.commit_time);
            self.update_clock();
        }
        self.next = match chunk.end {
            Some(end) => {
                self.last_end = end.end_lsn;
                Offset::after_transaction(end.end_lsn)
            }
            None => {
                Offset::inside_transaction(commit_lsn, chunk.first_seq + chunk.changes.len() as u64)
            }
        };
        Ok(())
    }

    /// The most changes waiting in one lane (a lane whose batch waits for the stream to
    /// pass a backfill window does not count until more changes come).
    pub fn pending(&self) -> usize {
        self.lanes
            .iter()
            .filter(|l| !l.held)
            .map(Lane::pending_changes)
            .max()
            .unwrap_or(0)
    }

    /// Every transaction committed before `lsn` has been routed (a logical message at
    /// `lsn` came through the stream after them).
    pub fn note_delivered(&mut self, lsn: Lsn) {
        for lane in &mut self.lanes {
            lane.note_delivered(lsn);
        }
    }

    /// When the next backfill chunk is due (`None`: no target backfills).
    pub fn backfill_due(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter(|l| l.detached.is_none())
            .filter_map(|l| {
                l.backfill
                    .as_ref()
                    .and_then(|b| b.next_at(l.pending_changes() > 0))
            })
            .min()
    }

    /// Whether any target still loads existing rows (a target set aside does not count: it
    /// goes on once the stream restarts for it).
    pub fn backfilling(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| l.detached.is_none() && l.backfill.as_ref().is_some_and(|b| b.state.running()))
    }

    /// Whether changes were pushed since the last flush, or a flush still runs in the
    /// background.
    pub fn has_unflushed(&self) -> bool {
        self.oldest.is_some() || self.behind.is_some()
    }

    /// Whether some target holds changes not yet written (with [`Projector::has_unflushed`]
    /// false: a batch held back by a backfill window). [`Projector::flush`] writes them.
    pub fn holds_changes(&self) -> bool {
        self.lanes.iter().any(|l| l.pending_changes() > 0)
    }

    /// While catching up, when the oldest waiting change must be flushed even though its
    /// batch is not full (`batch.max_age` after it was routed).
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.max_age)
    }

    /// Whether the projection is catching up: the oldest change not yet durable committed
    /// more than `target_lag` ago. Then batches fill up to the adaptive size (flushing
    /// small ones as the stream delivers would spend on flushes what the backlog needs).
    pub fn catching_up(&self) -> bool {
        self.lag() > self.target_lag
    }

    /// The current adaptive batch size.
    pub fn batch_size(&self) -> usize {
        self.size.size()
    }

    /// Make everything pushed so far durable in every target.
    pub async fn flush(&mut self) -> Result<FlushReport, SinkError> {
        // Everything: a batch waiting for the stream to pass a backfill window too.
        for lane in &mut self.lanes {
            lane.force = true;
        }
        let report = self.flush_group(false).await;
        for lane in &mut self.lanes {
            lane.force = false;
        }
        report
    }

    /// Flush; with `behind`, Postgres mirror lanes may write in the background (see
    /// [`Lane::flush_behind`]) while the next batch is routed, and their offsets become
    /// durable at a later call. Reports count what became durable during the call,
    /// background flushes of earlier calls included.
    pub async fn flush_group(&mut self, behind: bool) -> Result<FlushReport, SinkError> {
        let started = Instant::now();
        let to = self.next;
        let ack = if to.changes_done == 0 {
            to.resume_lsn
        } else {
            self.last_end
        };
        let rows = self.pending();
        self.share_recomputes(to).await;
        let outcomes = join_all(self.lanes.iter_mut().map(|l| async move {
            match (l.detached, behind) {
                (Some(_), _) => Ok(LaneFlush::default()),
                (None, true) => l.flush_behind(to, ack).await,
                (None, false) => l.flush(to, ack).await,
            }
        }))
        .await;
        // What is not durable yet, for a lane set aside now: its batch.
        let lacking = self
            .behind
            .map(|(_, c)| c)
            .or(self.oldest_commit)
            .unwrap_or_else(pg_now);
        let mut results = Vec::with_capacity(outcomes.len());
        let mut failed = None;
        for (lane, outcome) in self.lanes.iter_mut().zip(outcomes) {
            match outcome {
                Ok(r) => results.push(r),
                Err(e @ SinkError::Stalled { .. }) => {
                    tracing::error!(target_name = %lane.name, error = %e, "target set aside; the others go on");
                    lane.detach(lacking);
                    results.push(LaneFlush::default());
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    results.push(LaneFlush::default());
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for lane in self.lanes.iter_mut().filter(|l| l.detached.is_some()) {
            if lane.probe().await {
                return Err(SinkError::Restart {
                    target: lane.name.clone(),
                    message:
                        "answers again after being set aside; the stream restarts from its offset"
                            .to_owned(),
                });
            }
        }
        self.swap_rebuilt().await?;
        let took = started.elapsed();
        // What is not durable yet: the batch the lanes now write in the background.
        self.behind = match (self.lanes.iter().any(Lane::is_behind), self.oldest_commit) {
            (true, Some(commit)) => Some((Instant::now(), commit)),
            (true, None) => self.behind.map(|(_, c)| (Instant::now(), c)),
            (false, _) => None,
        };
        // `oldest_commit` is durable now (it is cleared below).
        let pending = self.oldest_commit.take();
        self.update_clock();
        self.oldest_commit = pending;
        for (lane, r) in self.lanes.iter().zip(&results) {
            if r.written > 0 || r.dead_letters > 0 {
                metrics::histogram!("pgprism_batch_flush_duration_seconds", "sink" => lane.sink.clone())
                    .record(took.as_secs_f64());
                metrics::histogram!("pgprism_batch_rows", "sink" => lane.sink.clone())
                    .record(r.written as f64);
            }
            if r.dead_letters > 0 {
                metrics::counter!("pgprism_dead_letters_total", "projection" => lane.projection.clone())
                    .increment(r.dead_letters);
            }
        }
        let lag = self.oldest_commit.map(lag_of).unwrap_or_default();
        if results.iter().any(|r| r.contended) {
            self.size.contended();
        } else {
            self.size.flushed(rows, took, lag);
        }
        let report = FlushReport {
            changes: self.changes,
            written: results.iter().map(|r| r.written).sum(),
            dead_letters: results.iter().map(|r| r.dead_letters).sum(),
            lanes: self
                .lanes
                .iter()
                .map(|l| l.name.clone())
                .zip(results)
                .collect(),
            took,
            offset: to,
        };
        self.changes = 0;
        self.oldest = None;
        self.oldest_commit = None;
        Ok(report)
    }

    /// A rebuild's shadow lane that is loaded and durable at the live lane's offset takes
    /// the live table's place (see [`crate::rebuild`]); the lanes then restart.
    async fn swap_rebuilt(&mut self) -> Result<(), SinkError> {
        let Some(i) = self.lanes.iter().position(Lane::swap_ready) else {
            return Ok(());
        };
        let live = self.lanes[i]
            .swap
            .as_ref()
            .map(|s| s.live_target.clone())
            .unwrap_or_default();
        let Some(j) = self
            .lanes
            .iter()
            .position(|l| l.name == live && l.detached.is_none())
        else {
            return Ok(());
        };
        self.lanes[j].settle().await?;
        if self.lanes[j].stored != self.lanes[i].stored || self.lanes[j].pending_changes() > 0 {
            return Ok(());
        }
        let at = self.lanes[i].stored;
        self.lanes[i].swap_in(&self.pipeline).await?;
        tracing::info!(target_name = %live, offset = %at.resume_lsn, "rebuild done: the rebuilt table took the live one's place");
        Err(SinkError::Restart {
            target: live,
            message: "rebuilt and swapped in; the targets restart from their offsets".to_owned(),
        })
    }

    /// Targets of one query projection that wait on the same keys recompute them once
    /// (the query runs on the source, so each extra target would double its load).
    async fn share_recomputes(&mut self, to: Offset) {
        let mut done = vec![false; self.lanes.len()];
        for i in 0..self.lanes.len() {
            self.lanes[i].forget_recompute();
        }
        for i in 0..self.lanes.len() {
            if done[i] {
                continue;
            }
            let (head, tail) = self.lanes.split_at_mut(i + 1);
            let lead = &mut head[i];
            let mut same = Vec::new();
            for (j, other) in tail.iter_mut().enumerate() {
                if lead.same_recompute(other) {
                    done[i + 1 + j] = true;
                    same.push(other);
                }
            }
            if !same.is_empty() {
                lead.share_recompute(&mut same, to).await;
            }
        }
    }

    /// What the slot may be acknowledged to: every target has everything before it.
    pub fn ack_lsn(&self) -> Lsn {
        self.lanes
            .iter()
            .map(|l| l.ackable)
            .min()
            .unwrap_or_default()
    }

    /// How long the oldest change not yet durable has waited since its commit (zero when
    /// everything pushed is durable).
    pub fn lag(&self) -> Duration {
        self.undurable_since().map(lag_of).unwrap_or_default()
    }

    /// The commit time of the oldest change not durable in some target: in a batch
    /// waiting, in one flushing in the background, or missing from a target set aside.
    fn undurable_since(&self) -> Option<i64> {
        let behind = self.behind.map(|(_, c)| c);
        let detached = self.lanes.iter().filter_map(|l| l.detached);
        behind
            .into_iter()
            .chain(self.oldest_commit)
            .chain(detached)
            .min()
    }

    /// Publish [`Projector::undurable_since`] to the lag clock.
    fn update_clock(&self) {
        // Zero means "nothing pending": a commit at the Postgres epoch itself is 1 µs off.
        let oldest = self.undurable_since().map_or(0, |c| c.max(1));
        self.clock
            .oldest_pending_us
            .store(oldest, Ordering::Relaxed);
    }

    /// Per-target offsets and pending changes.
    pub fn targets(&self) -> Vec<TargetStatus> {
        self.lanes
            .iter()
            .map(|l| TargetStatus {
                name: l.name.clone(),
                projection: l.projection.clone(),
                sink: l.sink.clone(),
                offset: l.stored,
                pending: l.pending_changes(),
                backfill: l
                    .backfill
                    .as_ref()
                    .filter(|b| b.state.running())
                    .map(|b| (b.state.rows, b.remaining())),
            })
            .collect()
    }

    /// Rewind the named targets (all when `targets` is empty) to `to` for a replay. The
    /// caller then restarts the stream from [`Projector::resume_lsn`].
    pub async fn rewind(&mut self, to: Offset, targets: &[String]) -> Result<(), SinkError> {
        for lane in &mut self.lanes {
            if targets.is_empty() || targets.contains(&lane.name) {
                lane.rewind(to).await?;
            }
        }
        let next = self
            .lanes
            .iter()
            .map(|l| l.covered)
            .min()
            .unwrap_or_default();
        self.next = next;
        self.changes = 0;
        self.oldest = None;
        self.oldest_commit = None;
        Ok(())
    }
}

/// The source table and operation of a change, for `pgprism_changes_total`.
fn table_op(kind: &ChangeKind) -> (Option<&Arc<Relation>>, &'static str) {
    match kind {
        ChangeKind::Insert { relation, .. } => (Some(relation), "insert"),
        ChangeKind::Update { relation, .. } => (Some(relation), "update"),
        ChangeKind::Delete { relation, .. } => (Some(relation), "delete"),
        ChangeKind::Truncate { relations, .. } => (relations.first(), "truncate"),
        ChangeKind::Message(_) => (None, "message"),
    }
}

/// Microseconds between the Unix epoch and Postgres' (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Now in Postgres microseconds (since 2000-01-01).
fn pg_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        - PG_EPOCH_OFFSET_US
}

/// Now minus a commit time in Postgres microseconds.
fn lag_of(commit_time: i64) -> Duration {
    Duration::from_micros(pg_now().saturating_sub(commit_time).max(0) as u64)
}
