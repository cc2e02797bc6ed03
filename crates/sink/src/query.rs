//! `query` projections: read-model rows recomputed by the user's SQL over the source for
//! the keys a batch of changes touched.
//!
//! Each source table maps a change to read-model keys, either directly from a column of
//! the changed row (`order_items.order_id`), or through a fan-out query run on the source
//! (`customers.id` → every order of that customer). The old row counts as much as the new
//! one: an item moved from order A to order B touches both, and a deleted item touches its
//! order — so the mapped columns must be in the table's replica identity, checked when its
//! first change arrives.
//!
//! The recompute reads the source's **current** state, which is at least as new as every
//! change in the batch: a read model can lag, never go back in time, and a key whose
//! recompute is older than a later change is recomputed again when that change arrives.
//! Keys the query no longer returns are deleted from the target.
//!
//! All values stay in Postgres text form: key arrays go to the query as text-format
//! parameters (parsed by the server with the parameter's own type), and results come back
//! cast to text.

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use indexmap::IndexMap;
use pgprism_decoder::pgoutput::{OldTuple, Relation, ReplicaIdentity, TupleData, TupleValue};
use pgprism_decoder::stream::ChangeKind;
use pgprism_pg::quote_ident;
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Row};

use crate::batch::{Batch, Entry, Key, Op, Origin, Position, Shape, ShapeColumn};
use crate::error::{Class, SinkError};
use crate::spec::QuerySpec;

/// How one source table's changes become keys.
#[derive(Debug, Clone)]
pub enum Mapping {
    /// The key is in these columns of the changed row.
    Columns(Vec<String>),
    /// `query` maps an array of `column` values (`$1`) to keys.
    FanOut {
        /// The source column passed as `$1`.
        column: String,
        /// The user's fan-out query.
        query: String,
    },
}

#[derive(Debug)]
struct SourceTable {
    schema: String,
    table: String,
    qualified: Arc<str>,
    mapping: Mapping,
    /// The relation version last checked, and the indices of the mapped columns in it.
    checked: Option<(Arc<Relation>, Vec<usize>)>,
}

/// The keys a batch touched, waiting to be recomputed.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    direct: IndexMap<Key, Origin>,
    fan_out: HashMap<usize, (Vec<Bytes>, Origin)>,
    /// A mapped table was truncated: every key in the target must be recomputed.
    pub everything: bool,
    /// The last position folded in.
    pub last: Option<Position>,
    /// Transaction ids of the changes folded in: the recompute waits until they are
    /// visible to its snapshot.
    pub xids: std::collections::BTreeSet<u32>,
}

impl KeySet {
    /// Just `key`, as of `pos`.
    pub fn single(key: Key, pos: Position) -> KeySet {
        let mut k = KeySet::default();
        k.direct.insert(
            key,
            Origin {
                table: "*".into(),
                op: "retry",
            },
        );
        k.last = Some(pos);
        k
    }

    /// Nothing to recompute.
    pub fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.fan_out.is_empty() && !self.everything
    }

    /// How many keys and fan-out values are waiting.
    pub fn len(&self) -> usize {
        self.direct.len() + self.fan_out.values().map(|(v, _)| v.len()).sum::<usize>()
    }
}

/// A query projection.
#[derive(Debug)]
pub struct QueryProjection {
    name: String,
    key: Vec<String>,
    query: String,
    sources: Vec<SourceTable>,
    /// Known after the query was prepared on the source: row shape, the text-casting
    /// wrapper and its parameter types (so each recompute is one typed round trip).
    prepared: Option<(Arc<Shape>, String, Vec<Type>)>,
    /// A slow recompute was logged (once per projection and process).
    warned_slow: bool,
}

/// A recompute slower than this per key (over at least [`SLOW_MIN_KEYS`] keys) is logged
/// once, with its likely cause. The example read model takes ~20–50 µs per key with
/// planner statistics and ~25× that on tables never analyzed.
pub const SLOW_PER_KEY: std::time::Duration = std::time::Duration::from_millis(1);

/// Fewest keys a recompute must have to be judged by its time per key.
pub const SLOW_MIN_KEYS: usize = 20;

/// Of the tables `(schema, table)`, those holding data without planner statistics (never
/// `ANALYZE`d, by hand or by autovacuum), as `schema.table` quoted for SQL. Their plans
/// are guesses: a projection query over them can be many times slower.
pub async fn tables_without_statistics(
    client: &Client,
    tables: &[(String, String)],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip();
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
               FROM unnest($1::text[], $2::text[]) AS t(s, r)
               JOIN pg_namespace n ON n.nspname = t.s
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r
              WHERE pg_relation_size(c.oid) > 0
                AND (c.reltuples < 0
                     OR NOT EXISTS (SELECT 1 FROM pg_stats st
                                     WHERE st.schemaname = n.nspname AND st.tablename = c.relname))
              ORDER BY 1",
            &[&schemas, &names],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Begin a REPEATABLE READ READ ONLY transaction on `source` whose snapshot sees every
/// transaction in `xids` (waiting, by retrying, for a commit decoded before it became
/// visible; see [`QueryProjection::resolve`]). The caller ends the transaction.
pub(crate) async fn begin_visible_snapshot(
    source: &Client,
    what: &str,
    xids: &std::collections::BTreeSet<u32>,
) -> Result<(), SinkError> {
    let xids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
    let started = std::time::Instant::now();
    loop {
        // The transaction and its first statement go out together (one round trip).
        let xid_param: [(&(dyn ToSql + Sync), Type); 1] = [(&xids, Type::INT8_ARRAY)];
        let (begun, running) = tokio::join!(
            source.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
            source.query_typed_one(
                // Widen each 32-bit xid to the xid8 nearest the snapshot's xmax (it is
                // recent), then ask the snapshot: an xid at or past xmax, or in the
                // in-progress list, is not visible yet.
                "WITH s AS (SELECT pg_current_snapshot() AS snap),
                      m AS (SELECT pg_snapshot_xmax(snap)::text::int8 AS xmax FROM s)
                 SELECT count(*) FROM s, m, unnest($1::int8[]) AS x(xid)
                  WHERE NOT pg_visible_in_snapshot(
                          (m.xmax - (((m.xmax % 4294967296) - x.xid + 6442450944) % 4294967296
                                     - 2147483648))::text::xid8,
                          s.snap)",
                &xid_param,
            )
        );
        if let Err(e) = begun {
            let _ = source.batch_execute("ROLLBACK").await;
            return Err(SinkError::pg(what, "taking a snapshot of the source")(e));
        }
        let running: i64 = match running {
            Ok(r) => r.get(0),
            Err(e) => {
                let _ = source.batch_execute("ROLLBACK").await;
                return Err(SinkError::pg(what, "taking a snapshot of the source")(e));
            }
        };
        if running == 0 {
            return Ok(());
        }
        let _ = source.batch_execute("ROLLBACK").await;
        if started.elapsed() > std::time::Duration::from_secs(30) {
            return Err(SinkError::Restart {
                target: what.to_owned(),
                message: "transactions decoded 30 s ago are still not visible on the source"
                    .to_owned(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

impl QueryProjection {
    /// The source tables a backfill scans to find every key, with the columns it reads
    /// (the mapped ones) and their index: the tables whose mapped columns are their
    /// primary key (`orders.id` for a read model keyed by order), else every table mapped
    /// by columns, else every table (through its fan-out query). `pk` gives a table's
    /// primary key.
    pub(crate) fn backfill_scans(
        &self,
        pk: impl Fn(&str, &str) -> Vec<String>,
    ) -> Vec<crate::backfill::Scan> {
        let mapped = |s: &SourceTable| match &s.mapping {
            Mapping::Columns(c) => c.clone(),
            Mapping::FanOut { column, .. } => vec![column.clone()],
        };
        let by_pk: Vec<usize> = (0..self.sources.len())
            .filter(|&i| {
                let s = &self.sources[i];
                matches!(&s.mapping, Mapping::Columns(c) if *c == pk(&s.schema, &s.table))
            })
            .collect();
        let by_columns: Vec<usize> = (0..self.sources.len())
            .filter(|&i| matches!(self.sources[i].mapping, Mapping::Columns(_)))
            .collect();
        let chosen = if !by_pk.is_empty() {
            by_pk
        } else if !by_columns.is_empty() {
            by_columns
        } else {
            (0..self.sources.len()).collect()
        };
        chosen
            .into_iter()
            .map(|i| {
                let s = &self.sources[i];
                let key = pk(&s.schema, &s.table);
                let key = if key.is_empty() { mapped(s) } else { key };
                crate::backfill::Scan::new(&s.schema, &s.table, &key, &mapped(s), i)
            })
            .collect()
    }

    /// Add the keys of rows a backfill scanned (the mapped columns of source table
    /// `source_index`) to `keys`, as of `pos`.
    pub(crate) fn add_scanned(
        &self,
        source_index: usize,
        rows: &[crate::backfill::ChunkRow],
        pos: Position,
        keys: &mut KeySet,
    ) {
        let Some(source) = self.sources.get(source_index) else {
            return;
        };
        let origin = Origin {
            table: source.qualified.clone(),
            op: "backfill",
        };
        for row in rows {
            let Some(values) = row.iter().cloned().collect::<Option<Vec<Bytes>>>() else {
                continue;
            };
            match &source.mapping {
                Mapping::Columns(_) => {
                    keys.direct.entry(values).or_insert_with(|| origin.clone());
                }
                Mapping::FanOut { .. } => {
                    keys.fan_out
                        .entry(source_index)
                        .or_insert_with(|| (Vec::new(), origin.clone()))
                        .0
                        .extend(values);
                }
            }
        }
        keys.last = Some(keys.last.map_or(pos, |l| l.max(pos)));
    }

    /// A projection from its spec; `mappings` holds the resolved mapping per source table.
    pub fn new(spec: &QuerySpec, mappings: Vec<(String, String, Mapping)>) -> QueryProjection {
        QueryProjection {
            name: spec.name.clone(),
            key: spec.key.clone(),
            query: spec.query.clone(),
            sources: mappings
                .into_iter()
                .map(|(schema, table, mapping)| SourceTable {
                    qualified: format!("{schema}.{table}").into(),
                    schema,
                    table,
                    mapping,
                    checked: None,
                })
                .collect(),
            prepared: None,
            warned_slow: false,
        }
    }

    /// The source tables the projection maps changes from, as `(schema, table)`.
    pub(crate) fn source_tables(&self) -> Vec<(String, String)> {
        self.sources
            .iter()
            .map(|s| (s.schema.clone(), s.table.clone()))
            .collect()
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether changes of `rel` touch this projection.
    pub fn is_source(&self, rel: &Relation) -> bool {
        self.source_index(rel).is_some()
    }

    fn source_index(&self, rel: &Relation) -> Option<usize> {
        self.sources
            .iter()
            .position(|s| rel.schema() == s.schema && rel.name == s.table)
    }

    /// Check that `rel` (a source table of this projection, as the catalog describes it)
    /// has the mapped columns in its replica identity.
    pub fn check_relation(&mut self, rel: &Arc<Relation>) -> Result<(), SinkError> {
        let Some(i) = self.source_index(rel) else {
            return Ok(());
        };
        let name = self.name.clone();
        self.sources[i].columns_in(rel, &name).map(|_| ())
    }

    /// Prepare the query on the source: learn the row shape. Errors name the projection.
    pub async fn prepare(&mut self, source: &Client) -> Result<Arc<Shape>, SinkError> {
        if let Some((shape, _, _)) = &self.prepared {
            return Ok(shape.clone());
        }
        let stmt = source
            .prepare(&self.query)
            .await
            .map_err(SinkError::pg(&self.name, "preparing the projection query"))?;
        if stmt.params().len() != self.key.len() {
            return Err(SinkError::config(
                &self.name,
                format!(
                    "the query takes {} parameters; it must take one array per key column ({}), like `WHERE o.id = ANY($1)`",
                    stmt.params().len(),
                    self.key.len()
                ),
            ));
        }
        let columns: Vec<ShapeColumn> = stmt
            .columns()
            .iter()
            .map(|c| ShapeColumn {
                name: c.name().to_owned(),
                type_oid: c.type_().oid(),
            })
            .collect();
        let key = self
            .key
            .iter()
            .map(|k| {
                columns.iter().position(|c| &c.name == k).ok_or_else(|| {
                    SinkError::config(
                        &self.name,
                        format!("the query returns no column {k:?} (a key column)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let select = columns
            .iter()
            .map(|c| format!("q.{}::text", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let wrapped = format!("SELECT {select} FROM ({}) AS q", self.query);
        let shape = Arc::new(Shape { columns, key });
        self.prepared = Some((shape.clone(), wrapped, stmt.params().to_vec()));
        Ok(shape)
    }

    /// Add the keys `kind` touches to `keys`.
    pub fn touch(
        &mut self,
        kind: &ChangeKind,
        pos: Position,
        xid: u32,
        keys: &mut KeySet,
    ) -> Result<(), SinkError> {
        keys.xids.insert(xid);
        let (relation, tuples, op): (&Arc<Relation>, Vec<&TupleData>, &'static str) = match kind {
            ChangeKind::Insert { relation, new } => (relation, vec![new], "insert"),
            ChangeKind::Update { relation, old, new } => {
                let mut t = vec![new];
                if let Some(o) = old {
                    t.push(o.data());
                }
                (relation, t, "update")
            }
            ChangeKind::Delete { relation, old } => (
                relation,
                vec![match old {
                    OldTuple::Key(t) | OldTuple::Full(t) => t,
                }],
                "delete",
            ),
            ChangeKind::Truncate { relations, .. } => {
                if relations.iter().any(|r| self.is_source(r)) {
                    keys.everything = true;
                    keys.last = Some(pos);
                }
                return Ok(());
            }
            ChangeKind::Message(_) => return Ok(()),
        };
        let Some(i) = self.source_index(relation) else {
            return Ok(());
        };
        let name = self.name.clone();
        let source = &mut self.sources[i];
        let cols = source.columns_in(relation, &name)?.to_vec();
        let origin = Origin {
            table: source.qualified.clone(),
            op,
        };
        for tuple in tuples {
            let values: Option<Vec<Bytes>> = cols
                .iter()
                .map(|&c| match tuple.get(c) {
                    Some(TupleValue::Text(b)) => Some(b.clone()),
                    _ => None,
                })
                .collect();
            // A null mapped column (an optional reference) maps to no key.
            let Some(values) = values else { continue };
            match &source.mapping {
                Mapping::Columns(_) => {
                    keys.direct.entry(values).or_insert_with(|| origin.clone());
                }
                Mapping::FanOut { .. } => {
                    let entry = keys
                        .fan_out
                        .entry(i)
                        .or_insert_with(|| (Vec::new(), origin.clone()));
                    entry.0.extend(values);
                }
            }
        }
        keys.last = Some(pos);
        Ok(())
    }

    /// Run the projection query for `keys`; when it fails for some keys (a value error
    /// raised by the query), bisect until those keys are alone and return them apart.
    /// Log once when a recompute of `keys` keys took more than [`SLOW_PER_KEY`] each,
    /// with the likely cause: source tables never analyzed (then the fix is `ANALYZE`),
    /// else the query's plan.
    async fn judge_speed(&mut self, source: &Client, keys: usize, took: std::time::Duration) {
        if self.warned_slow || keys < SLOW_MIN_KEYS || took < SLOW_PER_KEY * keys as u32 {
            return;
        }
        self.warned_slow = true;
        let per_key = took / keys as u32;
        match tables_without_statistics(source, &self.source_tables()).await {
            Ok(tables) if !tables.is_empty() => tracing::warn!(
                projection = %self.name, keys, took = ?took, per_key = ?per_key,
                "the projection query is slow; likely cause: {} never analyzed (no planner statistics), so its plans are guesses; fix: ANALYZE {}",
                tables.join(", "), tables.join(", ")
            ),
            _ => tracing::warn!(
                projection = %self.name, keys, took = ?took, per_key = ?per_key,
                "the projection query is slow; likely cause: its plan (a scan where an index on the key columns would serve, or a costly subquery per key); see EXPLAIN ANALYZE of the query with a batch of keys"
            ),
        }
    }

    async fn recompute(
        &self,
        source: &Client,
        wrapped: &str,
        types: &[Type],
        keys: Vec<Key>,
    ) -> Result<(Vec<Row>, Vec<(Key, SinkError)>), SinkError> {
        let mut rows = Vec::new();
        let mut failed = Vec::new();
        let mut work = vec![keys];
        while let Some(keys) = work.pop() {
            if keys.is_empty() {
                continue;
            }
            let params: Vec<TextArray> = (0..self.key.len())
                .map(|j| {
                    let col: Vec<Bytes> = keys.iter().map(|k| k[j].clone()).collect();
                    TextArray::new(&col)
                })
                .collect();
            let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                .iter()
                .zip(types)
                .map(|(p, t)| (p as &(dyn ToSql + Sync), t.clone()))
                .collect();
            // Inside the snapshot's transaction: a failing query must not abort it. The
            // savepoint and the query go out together (one round trip).
            let (saved, result) = tokio::join!(
                source.batch_execute("SAVEPOINT pgprism_recompute"),
                source.query_typed(wrapped, &typed)
            );
            saved.map_err(SinkError::pg(&self.name, "running the projection query"))?;
            let result = result.map_err(SinkError::pg(&self.name, "running the projection query"));
            let end = if result.is_ok() {
                "RELEASE SAVEPOINT pgprism_recompute"
            } else {
                "ROLLBACK TO SAVEPOINT pgprism_recompute; RELEASE SAVEPOINT pgprism_recompute"
            };
            source
                .batch_execute(end)
                .await
                .map_err(SinkError::pg(&self.name, "running the projection query"))?;
            match result {
                Ok(r) => rows.extend(r),
                Err(e) if e.class() == Class::Row => {
                    if keys.len() == 1 {
                        let key = keys.into_iter().next().expect("one key");
                        failed.push((key, e));
                    } else {
                        let mut a = keys;
                        let b = a.split_off(a.len() / 2);
                        work.push(b);
                        work.push(a);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((rows, failed))
    }

    /// Recompute the rows of `keys` (plus `existing`, the target's keys, when a source
    /// table was truncated) on the source: upserts for rows the query returns, deletes
    /// for keys it no longer returns. Keys the query fails for (a value error in the
    /// query for that key) come back apart, for the dead letters.
    ///
    /// **Visibility.** Postgres can hand a commit to logical decoding a moment before the
    /// transaction becomes visible to other sessions (the commit record is flushed before
    /// the transaction leaves the proc array). Reading the source then would miss it, and
    /// nothing would recompute the key again. So the fan-out and projection queries run in
    /// one REPEATABLE READ snapshot taken only once every transaction of the batch is
    /// visible in it (`pg_visible_in_snapshot`).
    pub async fn resolve(
        &mut self,
        source: &Client,
        keys: KeySet,
        existing: Vec<Key>,
    ) -> Result<(Batch, Vec<(Key, Entry, SinkError)>), SinkError> {
        let shape = self.prepare(source).await?;
        begin_visible_snapshot(source, &self.name, &keys.xids).await?;
        let result = self
            .resolve_in_snapshot(source, shape, keys, existing)
            .await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = source
            .batch_execute(end)
            .await
            .map_err(SinkError::pg(&self.name, "ending the source snapshot"));
        let out = result?;
        ended?;
        Ok(out)
    }

    async fn resolve_in_snapshot(
        &mut self,
        source: &Client,
        shape: Arc<Shape>,
        keys: KeySet,
        existing: Vec<Key>,
    ) -> Result<(Batch, Vec<(Key, Entry, SinkError)>), SinkError> {
        let (wrapped, types) = self
            .prepared
            .as_ref()
            .map(|(_, w, t)| (w.clone(), t.clone()))
            .unwrap_or_default();
        let pos = keys.last.unwrap_or_default();
        let mut wanted: IndexMap<Key, Origin> = keys.direct;
        for (i, (values, origin)) in keys.fan_out {
            let s = &self.sources[i];
            let Mapping::FanOut { query, .. } = &s.mapping else {
                continue;
            };
            let aliases = (0..self.key.len())
                .map(|j| format!("k{j}"))
                .collect::<Vec<_>>()
                .join(", ");
            let select = (0..self.key.len())
                .map(|j| format!("k{j}::text"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("SELECT {select} FROM ({query}) AS f({aliases})");
            let param = TextArray::new(&values);
            let rows = source
                .query(&sql, &[&param])
                .await
                .map_err(SinkError::pg(&self.name, "running the fan-out query"))?;
            for row in rows {
                if let Some(key) = row_texts(&row) {
                    wanted.entry(key).or_insert_with(|| origin.clone());
                }
            }
        }
        if keys.everything {
            let origin = Origin {
                table: "*".into(),
                op: "truncate",
            };
            for key in existing {
                wanted.entry(key).or_insert_with(|| origin.clone());
            }
        }
        let mut batch = Batch::new(shape.clone());
        if wanted.is_empty() {
            return Ok((batch, Vec::new()));
        }
        let asked: Vec<Key> = wanted.keys().cloned().collect();
        let started = std::time::Instant::now();
        let (rows, failed) = self.recompute(source, &wrapped, &types, asked).await?;
        self.judge_speed(source, wanted.len(), started.elapsed())
            .await;
        let failed: Vec<(Key, Entry, SinkError)> = failed
            .into_iter()
            .filter_map(|(key, e)| {
                let origin = wanted.swap_remove(&key)?;
                let entry = Entry {
                    op: Op::Recompute,
                    pos,
                    origin,
                };
                Some((key, entry, e))
            })
            .collect();
        for row in rows {
            let values: Vec<TupleValue> = (0..row.len())
                .map(|j| match row.get::<_, Option<String>>(j) {
                    Some(s) => TupleValue::Text(Bytes::from(s)),
                    None => TupleValue::Null,
                })
                .collect();
            let key: Option<Key> = shape
                .key
                .iter()
                .map(|&k| match &values[k] {
                    TupleValue::Text(b) => Some(b.clone()),
                    _ => None,
                })
                .collect();
            let Some(key) = key else { continue };
            // Only the keys asked for: a query that returns more does not widen the batch.
            let Some(origin) = wanted.swap_remove(&key) else {
                continue;
            };
            batch.push(
                key,
                Entry {
                    op: Op::Upsert(values),
                    pos,
                    origin,
                },
            );
        }
        for (key, origin) in wanted {
            batch.push(
                key,
                Entry {
                    op: Op::Delete,
                    pos,
                    origin,
                },
            );
        }
        Ok((batch, failed))
    }
}

impl SourceTable {
    /// The mapped columns' indices in `rel`, checked against its replica identity.
    fn columns_in(&mut self, rel: &Arc<Relation>, projection: &str) -> Result<&[usize], SinkError> {
        let fresh = matches!(&self.checked, Some((r, _)) if Arc::ptr_eq(r, rel) || **r == **rel);
        if !fresh {
            let names: Vec<&str> = match &self.mapping {
                Mapping::Columns(c) => c.iter().map(String::as_str).collect(),
                Mapping::FanOut { column, .. } => vec![column.as_str()],
            };
            let full = rel.replica_identity == ReplicaIdentity::Full;
            let mut idx = Vec::new();
            for n in names {
                let Some(i) = rel.column_index(n) else {
                    return Err(SinkError::config(
                        projection,
                        format!("{} has no column {n:?}", self.qualified),
                    ));
                };
                if !full && !rel.columns[i].is_key {
                    return Err(SinkError::config(
                        projection,
                        format!(
                            "column {n:?} of {} maps changes to keys but is not in the table's \
                             replica identity, so a delete or an update moving the row would not \
                             say which key it left; fix: ALTER TABLE {}.{} REPLICA IDENTITY FULL",
                            self.qualified,
                            quote_ident(&self.schema),
                            quote_ident(&self.table)
                        ),
                    ));
                }
                idx.push(i);
            }
            self.checked = Some((rel.clone(), idx));
        }
        Ok(self
            .checked
            .as_ref()
            .map(|(_, i)| i.as_slice())
            .unwrap_or(&[]))
    }
}

fn row_texts(row: &Row) -> Option<Key> {
    (0..row.len())
        .map(|j| row.get::<_, Option<String>>(j).map(Bytes::from))
        .collect()
}

/// An array parameter sent in text format (`{"a","b"}`), so the server parses the elements
/// with the parameter's own type, whatever it is.
#[derive(Debug)]
pub struct TextArray(Bytes);

impl TextArray {
    /// The array literal of `values`.
    pub fn new(values: &[Bytes]) -> TextArray {
        let mut out =
            BytesMut::with_capacity(values.iter().map(|v| v.len() + 3).sum::<usize>() + 2);
        out.put_u8(b'{');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_u8(b'"');
            for &b in v.iter() {
                if b == b'"' || b == b'\\' {
                    out.put_u8(b'\\');
                }
                out.put_u8(b);
            }
            out.put_u8(b'"');
        }
        out.put_u8(b'}');
        TextArray(out.freeze())
    }
}

impl ToSql for TextArray {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_escape_quotes_and_backslashes() {
        let a = TextArray::new(&[Bytes::from("a"), Bytes::from("b\"c\\d"), Bytes::from("")]);
        assert_eq!(&a.0[..], br#"{"a","b\"c\\d",""}"#);
        assert_eq!(&TextArray::new(&[]).0[..], b"{}");
    }
}
